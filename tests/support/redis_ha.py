"""Redis as production runs it, on this machine: TLS with a test CA made by openssl here (a
server certificate for 127.0.0.1, a client certificate), an ACL user, and a Sentinel set (one
master, one replica, three sentinels). Debian's redis-server 7.0 is built with TLS; its
redis-sentinel package is installed by scripts/services.sh (not started as a service). Every
server listens on a spare loopback port, in its own directory, and is stopped by its pid."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support import stop
from tests.support.fleet import free_port, wait_for

PASSWORD = "data-" + "3a7c91f0d5"  # the data nodes' ACL user's (a test secret, never a real one)
SENTINEL_PASSWORD = "sentinel-" + "b84e2c6f19"
USER = "runner"
MASTER = "runner-test"


def missing_tools() -> str | None:
    """Why these servers cannot run here (naming the tool), or None."""
    for tool, package in (("redis-server", "redis-server"), ("redis-sentinel", "redis-sentinel"), ("openssl", "openssl")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package}; scripts/services.sh installs it)"
    return None


@dataclass
class LocalCA:
    """A CA and what it signed: a server certificate for 127.0.0.1 and localhost, and a client's."""

    directory: Path

    def __post_init__(self) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        self._openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=runner test CA",
                      "-keyout", "ca.key", "-out", "ca.crt")
        for name, extension in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
                                ("client", "extendedKeyUsage=clientAuth")):
            (d / f"{name}.ext").write_text(extension + "\n")
            self._openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                          "-out", f"{name}.csr")
            self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                          "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.directory, check=True, capture_output=True, timeout=60)

    def path(self, name: str) -> str:
        return str(self.directory / name)


@dataclass
class Node:
    """One redis-server or redis-sentinel with a config file of its own."""

    directory: Path
    lines: list[str]
    sentinel: bool = False
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def start(self) -> Node:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "node.conf"
        conf.write_text("\n".join([f"port {self.port}", "bind 127.0.0.1", f"dir {self.directory}", 'save ""',
                                   "appendonly no", "protected-mode no", *self.lines]) + "\n")
        conf.chmod(0o600)
        command = ["redis-sentinel", str(conf)] if self.sentinel else ["redis-server", str(conf)]
        self.proc = subprocess.Popen(command, stdout=(self.directory / "log").open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, wait=10)

    def client(self, **options) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **options)


def acl_lines(password: str) -> list[str]:
    """The runner's ACL user; `default` is off, so a client without the user is refused."""
    return [f"user {USER} on >{password} ~* &* +@all", "user default off"]


def tls_redis(directory: Path, ca: LocalCA) -> Node:
    """A Redis that speaks only TLS, asks for a client certificate, and knows only the ACL user."""
    node = Node(directory, ["port 0", *acl_lines(PASSWORD)])
    node.lines += [f"tls-port {node.port}", f"tls-cert-file {ca.path('server.crt')}", f"tls-key-file {ca.path('server.key')}",
                   f"tls-ca-cert-file {ca.path('ca.crt')}", "tls-auth-clients yes"]
    node.start()
    wait_for(lambda: _answers(node, ssl=True, ssl_ca_certs=ca.path("ca.crt"), ssl_certfile=ca.path("client.crt"),
                              ssl_keyfile=ca.path("client.key"), username=USER, password=PASSWORD), 10, "TLS redis up")
    return node


def _answers(node: Node, **options) -> bool:
    try:
        return bool(node.client(**options).ping())
    except (redis.RedisError, OSError):
        return False


@dataclass
class SentinelSet:
    """A master, its replica and three sentinels watching them (quorum 2), all with passwords;
    with `ca`, every one of them speaks only TLS (replication and the sentinels' links too)."""

    directory: Path
    ca: LocalCA | None = None
    master: Node = field(init=False)
    replica: Node = field(init=False)
    sentinels: list[Node] = field(init=False)

    def __post_init__(self) -> None:
        data = [*acl_lines(PASSWORD), f"masteruser {USER}", f"masterauth {PASSWORD}"]
        self.master = self._node("master", data)
        self.replica = self._node("replica", [*data, f"replicaof 127.0.0.1 {self.master.port}"])
        for node in (self.master, self.replica):
            wait_for(lambda node=node: _answers(node, username=USER, password=PASSWORD, **self.tls()), 10, "data node up")
        watch = [f"sentinel monitor {MASTER} 127.0.0.1 {self.master.port} 2", f"sentinel auth-user {MASTER} {USER}",
                 f"sentinel auth-pass {MASTER} {PASSWORD}", f"sentinel down-after-milliseconds {MASTER} 5000",
                 f"sentinel failover-timeout {MASTER} 15000", f"requirepass {SENTINEL_PASSWORD}",
                 f"sentinel sentinel-pass {SENTINEL_PASSWORD}"]
        self.sentinels = [self._node(f"sentinel-{n}", watch, sentinel=True) for n in range(3)]
        wait_for(self.ready, 30, "the sentinels to see the replica and each other")

    def _node(self, name: str, lines: list[str], sentinel: bool = False) -> Node:
        node = Node(self.directory / name, lines, sentinel=sentinel)
        if self.ca is not None:
            ca = self.ca
            node.lines = ["port 0", f"tls-port {node.port}", f"tls-cert-file {ca.path('server.crt')}",
                          f"tls-key-file {ca.path('server.key')}", f"tls-ca-cert-file {ca.path('ca.crt')}",
                          f"tls-client-cert-file {ca.path('client.crt')}", f"tls-client-key-file {ca.path('client.key')}",
                          "tls-replication yes", "tls-auth-clients optional", *lines]
        return node.start()

    def tls(self) -> dict:
        """A client's TLS options for this set's servers (none without TLS)."""
        if self.ca is None:
            return {}
        return {"ssl": True, "ssl_ca_certs": self.ca.path("ca.crt")}

    def ask(self, sentinel: Node, *command: str):
        client = sentinel.client(password=SENTINEL_PASSWORD, decode_responses=True, **self.tls())
        return client.execute_command("SENTINEL", *command)

    def ready(self) -> bool:
        try:
            return all(len(self.ask(s, "REPLICAS", MASTER)) == 1 and len(self.ask(s, "SENTINELS", MASTER)) == 2
                       and self._replica_linked() for s in self.sentinels)
        except (redis.RedisError, OSError):
            return False

    def _replica_linked(self) -> bool:
        info = self.replica.client(username=USER, password=PASSWORD, decode_responses=True, **self.tls()).info("replication")
        return info.get("master_link_status") == "up"

    def master_port(self) -> int:
        return int(self.ask(self.sentinels[0], "GET-MASTER-ADDR-BY-NAME", MASTER)[1])

    def failover(self) -> int:
        """SENTINEL FAILOVER; returns the new master's port once every sentinel names it."""
        old = self.master_port()
        assert self.ask(self.sentinels[0], "FAILOVER", MASTER)
        wait_for(lambda: all(int(self.ask(s, "GET-MASTER-ADDR-BY-NAME", MASTER)[1]) != old for s in self.sentinels),
                 30, "every sentinel to name the new master")
        return self.master_port()

    def config(self) -> dict:
        """The runner's settings for this set."""
        config = {"redis_sentinel": {"master": MASTER, "sentinels": [f"127.0.0.1:{s.port}" for s in self.sentinels],
                                     "sentinel_password": SENTINEL_PASSWORD, "tls": self.ca is not None},
                  "redis_username": USER, "redis_password": PASSWORD}
        if self.ca is not None:
            config["redis_tls"] = {"ca_file": self.ca.path("ca.crt"), "cert_file": self.ca.path("client.crt"),
                                   "key_file": self.ca.path("client.key")}
        return config

    def stop(self) -> None:
        for node in (*self.sentinels, self.replica, self.master):
            node.stop()

