"""Redis clients made from one RedisTarget (runner/config/redis_target.py): plain, TLS
(rediss://, a CA, a client certificate), an ACL user with a password or a password file (read
at each connection), or a master found through Sentinel.

With Sentinel, a failover moves the master, but a connection that is open keeps talking to the
old one, which goes on taking writes for seconds (until the sentinels turn it into a replica,
about 10 s with Redis 7.0) and then drops them all when it resynchronises. `FailoverWatch`
listens to the sentinels and closes every connection of the clients it was given the moment
a new master is announced (+switch-master), so what follows goes to the new master. What was
written to the old one in the second between its replica's promotion and that announcement
can still be lost: Redis replicates asynchronously (redis.io, "Sentinel: consistency under
partitions")."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.asyncio import sentinel as async_sentinel
from redis.credentials import CredentialProvider
from redis.driver_info import DriverInfo
from redis.sentinel import Sentinel, SentinelManagedConnection, SentinelManagedSSLConnection

from runner.config.redis_target import RedisTarget

log = logging.getLogger(__name__)

#: seconds between a FailoverWatch's own looks at the master (in case an announcement was missed)
RECHECK_SECONDS = 5.0
#: what every connection tells Redis it is (CLIENT SETINFO), as redis-py would: given, because
#: redis-py otherwise looks its own version up in the installed metadata at the first
#: connection, which cost ~7 ms of every CLI command
DRIVER = DriverInfo(lib_version=redis.__version__)


class TargetCredentials(CredentialProvider):
    """The target's user and password, asked at each connection (a password file is read then)."""

    def __init__(self, target: RedisTarget):
        self.target = target

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        username, password = self.target.credentials()
        if username:
            return username, password or ""
        return (password or "",)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()


def has_credentials(target: RedisTarget) -> bool:
    url = urlsplit(target.url)
    return bool(target.username or target.password or target.password_file or url.username or url.password)


def tls_options(target: RedisTarget) -> dict[str, Any]:
    """redis-py's SSL options for the target (empty without TLS)."""
    if not target.uses_tls:
        return {}
    files = target.tls
    return {"ssl_ca_certs": files.ca_file, "ssl_certfile": files.cert_file, "ssl_keyfile": files.key_file,
            "ssl_cert_reqs": "required", "ssl_check_hostname": files.check_hostname}


def connection_options(target: RedisTarget) -> dict[str, Any]:
    """What every data connection (not a sentinel's) gets: the credentials and TLS."""
    options = {"driver_info": DRIVER, **tls_options(target)}
    if has_credentials(target):
        options["credential_provider"] = TargetCredentials(target)
    return options


def sentinel_options(target: RedisTarget) -> dict[str, Any]:
    """What connections to the sentinels get: their password, TLS, short timeouts."""
    assert target.sentinel is not None
    options: dict[str, Any] = {"socket_timeout": 2, "socket_connect_timeout": 2, **tls_options(target)}
    if target.uses_tls:
        options["ssl"] = True
    if target.sentinel.sentinel_password:
        options["password"] = target.sentinel.sentinel_password
    return options


class SentinelConnection(SentinelManagedConnection):
    """redis-py's Sentinel connection asks the sentinels for the master in connect(), but a
    command that finds its connection closed reconnects through connect_check_health() with
    the address it had (redis-py 8.2): after a failover every retry went back to the old master.
    Here every (re)connection asks the sentinels."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if not self._sock and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health, retry_socket_connect)


class SentinelSSLConnection(SentinelConnection, SentinelManagedSSLConnection):
    pass


class AsyncSentinelConnection(async_sentinel.SentinelManagedConnection):
    """The same for asyncio clients (`runner serve`'s log readers)."""

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if not self.is_connected and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health, retry_socket_connect)


class AsyncSentinelSSLConnection(AsyncSentinelConnection, async_sentinel.SentinelManagedSSLConnection):
    pass


def sync_client(target: RedisTarget, **options: Any) -> redis.Redis:
    """A client of the target's master (redis-py options: decode_responses, retry, timeouts, ...)."""
    options = {**connection_options(target), **options}
    if target.sentinel is None:
        return redis.Redis.from_url(target.url, **options)
    sentinel = Sentinel(list(target.sentinel.nodes), sentinel_kwargs={**sentinel_options(target), "driver_info": DRIVER})
    connection = SentinelSSLConnection if target.uses_tls else SentinelConnection
    return sentinel.master_for(target.sentinel.master, db=target.db, connection_class=connection, **options)


class _BlockingSentinelPool(async_sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool):
    """Sentinel's pool that waits for a free connection past max_connections, as
    BlockingConnectionPool does (`runner serve` bounds its log readers this way)."""


def async_pool(target: RedisTarget, **options: Any) -> redis.asyncio.ConnectionPool:
    """A blocking asyncio pool for the target's master (options: max_connections, timeout, ...)."""
    options = {**connection_options(target), **options}
    if target.sentinel is None:
        return redis.asyncio.BlockingConnectionPool.from_url(target.url, **options)
    sentinel = async_sentinel.Sentinel(list(target.sentinel.nodes), sentinel_kwargs=sentinel_options(target))
    connection = AsyncSentinelSSLConnection if target.uses_tls else AsyncSentinelConnection
    return _BlockingSentinelPool(target.sentinel.master, sentinel, db=target.db, connection_class=connection, **options)


def probe_client(target: RedisTarget, timeout: float, decode_responses: bool = False) -> redis.Redis:
    """A client that answers within `timeout` or fails, never retrying (health checks)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return sync_client(target, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
                       decode_responses=decode_responses)


class FailoverWatch:
    """Keeps writes off an old master during a Sentinel failover (see the module's docstring).
    Does nothing without Sentinel. One daemon thread per sentinel follows its announcements
    (only the sentinel leading a failover announces its steps), reconnecting when it stops
    answering:

      +failover-state-send-slaveof-noone   the replica is about to be promoted: pause writes on
                                           the old master (CLIENT PAUSE WRITE), so none lands
                                           where the new master will never see it
      +switch-master                       the new master is announced: pause writes on the old one
                                           until the sentinels have turned it into a replica; once
                                           the sentinels all name the new master, close every
                                           client's connection there (CLIENT KILL TYPE normal:
                                           other processes' and kombu's too): what waited there
                                           fails, is retried, and reconnects to the new master

    Both need the ACL user to be allowed CLIENT PAUSE and CLIENT KILL; without that (or when
    the old master is gone) only this process's own connections move at the announcement, and
    the others when the sentinels demote the old master. Each thread also compares the
    master's address every RECHECK_SECONDS, in case an announcement was missed."""

    PAUSE_MS = 10_000  # a failover that stalls lets writes through on the old master after this
    DEMOTION_PAUSE_MS = 30_000  # longer than the sentinels take to demote the old master (~10 s)
    FENCE = "+failover-state-send-slaveof-noone"
    SWITCH = "+switch-master"

    def __init__(self, target: RedisTarget, clients: list[redis.Redis]):
        self.target, self.clients = target, clients
        self.stopped = threading.Event()
        self.switches = 0
        self._master: tuple[str, int] | None = None
        self._lock = threading.Lock()
        nodes = target.sentinel.nodes if target.sentinel else ()
        self.threads = [threading.Thread(target=self._follow, args=node, daemon=True, name=f"runner-sentinel-{port}")
                        for node in nodes for port in [node[1]]]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _follow(self, host: str, port: int) -> None:
        while not self.stopped.is_set():
            try:
                self._listen(redis.Redis(host=host, port=port, **sentinel_options(self.target)))
            except (redis.RedisError, OSError) as exc:
                log.debug("sentinel %s:%s: %s", host, port, exc)
            self.stopped.wait(1.0)

    def _listen(self, node: redis.Redis) -> None:
        """Follow one sentinel's announcements until it fails."""
        name = self.target.sentinel.master  # type: ignore[union-attr]
        with node.pubsub(ignore_subscribe_messages=True) as channel:
            channel.subscribe(self.FENCE, self.SWITCH)
            self._seen(master_address(node, name))
            last_look = time.monotonic()
            while not self.stopped.is_set():
                message = channel.get_message(timeout=1.0)
                if message is not None:
                    event, words = _text(message["channel"]), _text(message["data"]).split()
                    if event == self.FENCE and words[-4:-2] == ["@", name]:  # "slave ... @ NAME IP PORT"
                        self._on_old_master((words[-2], int(words[-1])), ("CLIENT", "PAUSE", self.PAUSE_MS, "WRITE"))
                    elif event == self.SWITCH and words[:1] == [name]:  # "NAME OLD-IP OLD-PORT NEW-IP NEW-PORT"
                        self._seen((words[3], int(words[4])), old=(words[1], int(words[2])))
                if time.monotonic() - last_look >= RECHECK_SECONDS:
                    self._seen(master_address(node, name))
                    last_look = time.monotonic()

    def _seen(self, address: tuple[str, int] | None, old: tuple[str, int] | None = None) -> None:
        """A sentinel named the master: if it moved, reconnect (once, whichever sentinel says it first)."""
        with self._lock:
            known, self._master = self._master, address or self._master
            if address is None or address == known or (known is None and old is None):
                return
            self.switches += 1
        previous = old or known
        assert previous is not None
        self._on_old_master(previous, ("CLIENT", "PAUSE", self.DEMOTION_PAUSE_MS, "WRITE"))
        self._agreed(address)
        # Redis closes them (a connection in use by another thread is not ours to close here):
        # every command waiting there fails, is retried, and reconnects through the sentinels
        self._on_old_master(previous, ("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
        for client in self.clients:
            client.connection_pool.disconnect(inuse_connections=False)
        log.warning("Redis master %r moved (Sentinel failover) from %s:%s to %s:%s; reconnecting",
                    self.target.sentinel.master, *previous, *address)  # type: ignore[union-attr]

    def _agreed(self, address: tuple[str, int], timeout: float = 2.0) -> None:
        """Wait (a little) until every sentinel that answers names `address`: a reconnection asks
        the first sentinel that answers, which must not send it back to the old master."""
        name = self.target.sentinel.master  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        for host, port in self.target.sentinel.nodes:  # type: ignore[union-attr]
            try:
                with redis.Redis(host=host, port=port, **sentinel_options(self.target)) as node:
                    while master_address(node, name) != address and time.monotonic() < deadline:
                        time.sleep(0.01)
            except (redis.RedisError, OSError):
                continue  # a sentinel that does not answer is not asked by a reconnection either

    def _on_old_master(self, address: tuple[str, int], *commands: tuple) -> None:
        try:
            with redis.Redis(host=address[0], port=address[1], socket_timeout=2, socket_connect_timeout=2,
                             ssl=self.target.uses_tls, **connection_options(self.target)) as old:
                for command in commands:
                    old.execute_command(*command)
        except (redis.RedisError, OSError) as exc:
            log.info("could not reach the old Redis master %s:%s during the failover (%s): connections elsewhere "
                     "follow when the sentinels demote it", *address, exc)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def master_address(node: redis.Redis, name: str) -> tuple[str, int] | None:
    """What one sentinel says the master's address is (None: it does not know the name)."""
    reply = node.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
    if not reply:
        return None
    host = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    return host, int(reply[1])
