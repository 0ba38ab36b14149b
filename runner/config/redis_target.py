"""Where Redis is and how to reach it, as one plain object: every Redis connection of the
runner (the job store, the outbox, `runner serve`'s log followers, the Celery broker, the
probes) is made from a RedisTarget (runner/store/redis_clients.py, runner/worker/queue.py).

Standard library only, and no pydantic (nor dataclasses: runner.core.frozen): the settings build
one (ClientSettings.redis_target) and so can a light client that reads the config its own way. Secrets stay out of `describe()`
and `repr()`; a password file is read at each connection, so a rotation needs no restart."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from runner.core.frozen import Frozen

SENTINEL_PORT = 26379


class TlsFiles(Frozen):
    """TLS towards Redis (and the sentinels, when they speak it): the CA that signed the
    server's certificate (None: the system's store), and a client certificate for servers
    that ask for one (`tls-auth-clients`)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True


class SentinelSet(Frozen):
    """A Redis master found through Sentinel: its name, the sentinels (host, port), their own
    password, the database, and whether they and the master speak TLS."""

    master: str
    nodes: tuple[tuple[str, int], ...]
    sentinel_password: str | None = None
    db: int = 0
    tls: bool = False
    _hidden = frozenset({"sentinel_password"})


class RedisTarget(Frozen):
    url: str = "redis://127.0.0.1:6379/0"  # may hold a password: not in repr()
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    tls: TlsFiles = TlsFiles()
    sentinel: SentinelSet | None = None
    _hidden = frozenset({"url", "password"})

    @property
    def uses_tls(self) -> bool:
        return self.sentinel.tls if self.sentinel else urlsplit(self.url).scheme == "rediss"

    @property
    def db(self) -> int:
        if self.sentinel:
            return self.sentinel.db
        path = urlsplit(self.url).path.strip("/")
        return int(path) if path.isdigit() else 0

    def credentials(self) -> tuple[str | None, str | None]:
        """(username, password) for the next connection: the password file read now, else the
        password, else the URL's; the username, else the URL's. Raises OSError naming the file."""
        parts = urlsplit(self.url)
        username = self.username or (unquote(parts.username) if parts.username else None)
        password = self.password or (unquote(parts.password) if parts.password else None)
        if self.password_file:
            password = read_secret_file(self.password_file)
        return username, password

    def secrets(self) -> list[str]:
        """Every secret this target holds or points to, for masking in logs (the file read now)."""
        found = [self.password, self.sentinel.sentinel_password if self.sentinel else None]
        parts = urlsplit(self.url)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        if self.password_file:
            try:
                found.append(read_secret_file(self.password_file))
            except OSError:
                pass  # unreadable now: the connection says so
        return [value for value in found if value]

    def describe(self) -> str:
        """Where Redis is, for messages: no password, ever."""
        if self.sentinel:
            nodes = ",".join(f"{host}:{port}" for host, port in self.sentinel.nodes)
            return f"master {self.sentinel.master!r} (db {self.db}) of the sentinels {nodes}" + \
                (" over TLS" if self.uses_tls else "")
        parts = urlsplit(self.url)
        user = self.username or (unquote(parts.username) if parts.username else None)
        host = parts.hostname or "127.0.0.1"
        shown = f"[{host}]" if ":" in host else host
        return f"{parts.scheme}://{user + '@' if user else ''}{shown}:{parts.port or 6379}/{self.db}"


def read_secret_file(path: str) -> str:
    return Path(path).read_text().strip()


def parse_node(text: str, default_port: int = SENTINEL_PORT) -> tuple[str, int]:
    """'host:port', '[v6]:port' or 'host' as (host, port). Raises ValueError saying what is wrong."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") if rest.startswith(":") else ("" if not rest else None)
        if not sep or port_text is None:
            raise ValueError(f"{text!r}: expected [IPv6]:PORT")
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"{text!r}: expected HOST:PORT")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)
