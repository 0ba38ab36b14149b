"""runner/worker/transport.py against the kombu it copies from: the copied Channel methods are
still kombu's (an upgrade that changes them fails here, naming what to re-port), and the
copy's BRPOP read flushes a streaming credential provider's rotated token as kombu's own does,
checked on a redis-server of the test's own with real ACL users."""

from __future__ import annotations

import hashlib
import inspect
import re
import threading
import time
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kombu
import pytest
import redis
from kombu.transport import redis as kombu_redis
from redis.auth.token import SimpleToken
from redis.credentials import StreamingCredentialProvider

from runner.worker.transport import COPIED_FROM
from tests.support.fleet import OwnRedis, wait_for

ROOT = Path(__file__).resolve().parents[1]

#: sha256 of kombu's Channel methods that runner/worker/transport.py mirrors, taken from kombu
#: 5.7.0 when the copy was made: `_brpop_start` and `_brpop_read` are copied (with the build gate
#: and the set-aside of invalid messages added); `_flush_brpop_reauth` is called from the copy's
#: `_brpop_read` on its contract (only while no BRPOP is in flight; never raises); `close` is
#: mirrored by the override's first lines (the in-flight BRPOP read before closing).
KOMBU_ORIGINALS = {
    "_brpop_start": "06723d707ddf224025af70ff511e07a27e1e8a37ec509e7dfa11ee408a79ccec",
    "_brpop_read": "c42518699709f2df90f55a048fe6346612ae5527e5c4a6819f2c0920dc62088f",
    "_flush_brpop_reauth": "bb4930b4fd3cf8f3420ce23b771570792cf599a0fcfb702c0d01099bdd6bf570",
    "close": "101e9b9cdad44b88185ecf6a18f07c2057f9768465cfa1e1a4a7fe16068a6bc2",
}


def source_digest(name: str) -> str:
    return hashlib.sha256(inspect.getsource(getattr(kombu_redis.Channel, name)).encode()).hexdigest()


def test_the_copied_kombu_methods_are_unchanged_in_the_installed_kombu():
    changed = [name for name, digest in KOMBU_ORIGINALS.items() if source_digest(name) != digest]
    assert not changed, (
        f"kombu {kombu.__version__} changed kombu.transport.redis.Channel.{', Channel.'.join(changed)}: "
        f"runner/worker/transport.py copies them from kombu {COPIED_FROM}. Diff kombu's new source against the "
        "copy, re-port what changed into runner/worker/transport.py (Channel._brpop_start, _brpop_read, close), "
        "then record the new digests in KOMBU_ORIGINALS and the new minor version in COPIED_FROM and the kombu "
        "pin in pyproject.toml")


def test_kombu_is_pinned_to_the_minor_version_the_copy_was_made_from():
    assert kombu.__version__.startswith(f"{COPIED_FROM}."), (kombu.__version__, COPIED_FROM)
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    major, minor = COPIED_FROM.split(".")
    assert f"kombu>={major}.{minor},<{major}.{int(minor) + 1}" in dependencies, dependencies


# -- streaming re-authentication of the BRPOP connection -------------------------------------------
class RotatingCredentials(StreamingCredentialProvider):
    """A streaming credential provider (as the Entra ID / IAM ones are): `rotate` hands redis-py
    a new token, which it AUTHs on idle pooled connections at once and stores on the ones in use
    (the consumer's BRPOP connection, never given back to the pool) for their owner to send."""

    def __init__(self, username: str, password: str):
        self.current = (username, password)
        self.listeners: list = []

    def get_credentials(self):
        return self.current

    def on_next(self, callback) -> None:
        self.listeners.append(callback)

    def on_error(self, callback) -> None:
        pass

    def is_streaming(self) -> bool:
        return True

    def rotate(self, username: str, password: str, *, then: tuple[str, str] | None = None) -> list[Exception]:
        """Emit a token for username/password to every listener (one per redis-py client made with
        this provider); `then`: what new connections get from now on. Returns what the listeners
        raised (redis-py raises when an idle connection refuses the token)."""
        now = time.time() * 1000
        token = SimpleToken(password, now + 3_600_000, now, {"oid": username})
        self.current = then or (username, password)
        errors = []
        for listener in self.listeners:
            try:
                listener(token)
            except redis.AuthenticationError as exc:
                errors.append(exc)
        return errors


@pytest.fixture
def acl_redis(tmp_path):
    """A redis-server of this test's own with two ACL users (their passwords random), and an
    admin client (the default user) to watch its connections."""
    server = OwnRedis(tmp_path)
    server.start()
    admin = redis.Redis(port=server.port, decode_responses=True)
    passwords = {user: uuid.uuid4().hex for user in ("alice", "bob")}
    for user, password in passwords.items():
        admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"],
                          commands=["+@all"])
    try:
        yield server, admin, passwords
    finally:
        admin.close()
        server.stop()


def connection(server: OwnRedis, **kwargs) -> kombu.Connection:
    return kombu.Connection(server.url, transport="runner.worker.transport:Transport", **kwargs)


class Consumer:
    """A SimpleQueue consumer on our transport, each get() on a thread of its own, so the test can
    act while its BRPOP is in flight."""

    def __init__(self, conn: kombu.Connection, queue: str):
        self.queue = conn.SimpleQueue(queue)
        self.got: list = []
        self.errors: list[BaseException] = []

    def get_in_background(self) -> threading.Thread:
        def get() -> None:
            try:
                message = self.queue.get(timeout=20)
                message.ack()
                self.got.append(message.payload)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(exc)

        thread = threading.Thread(target=get, daemon=True)
        thread.start()
        return thread


def brpop_client(admin: redis.Redis) -> dict:
    """The connection blocked in BRPOP (CLIENT LIST: id, user, cmd), once there is one."""
    return wait_for(lambda: next((c for c in admin.client_list() if c.get("cmd") == "brpop"), None), 10,
                    "a connection blocked in BRPOP")


def client(admin: redis.Redis, client_id: str) -> dict | None:
    return next((c for c in admin.client_list() if c["id"] == client_id), None)


@dataclass
class Consuming:
    """A consumer on our transport authenticated as alice by a RotatingCredentials, and a producer
    (the default user) on the same queue."""

    provider: RotatingCredentials
    consumer: Consumer
    producer: Any
    admin: redis.Redis
    passwords: dict[str, str]

    def deliver(self, payload: dict, getting: threading.Thread) -> None:
        """Put `payload` and wait for the consumer's get() in flight to have it."""
        self.producer.put(payload)
        getting.join(20)
        assert self.consumer.got[-1:] == [payload] and not self.consumer.errors, self.consumer.errors


@pytest.fixture
def consuming(acl_redis):
    server, admin, passwords = acl_redis
    queue = f"reauth-{uuid.uuid4().hex[:8]}"
    provider = RotatingCredentials("alice", passwords["alice"])
    with connection(server, credential_provider=provider) as consumer_conn, connection(server) as producer_conn:
        yield Consuming(provider, Consumer(consumer_conn, queue), producer_conn.SimpleQueue(queue), admin, passwords)


def test_a_rotated_token_reaches_the_brpop_connection_after_its_reply(consuming):
    """The token emitted while the consumer's BRPOP is in flight is sent (AUTH) on that very
    connection right after the BRPOP's reply: it is then the new user's, and stays up when the
    old user is deleted (as the broker ends connections whose credentials expired)."""
    c = consuming
    getting = c.consumer.get_in_background()
    blocked = brpop_client(c.admin)
    assert blocked["user"] == "alice"
    c.provider.rotate("bob", c.passwords["bob"])  # mid-BRPOP: redis-py can only store it on the connection
    assert client(c.admin, blocked["id"])["user"] == "alice", "nothing may be sent while the BRPOP is in flight"
    c.deliver({"n": 1}, getting)
    assert client(c.admin, blocked["id"])["user"] == "bob", "the rotated token was not sent after the reply"

    c.admin.acl_deluser("alice")  # Redis ends every connection still authenticated as alice
    getting = c.consumer.get_in_background()
    assert brpop_client(c.admin)["id"] == blocked["id"], "the consumer's connection was not the one re-authenticated"
    c.deliver({"n": 2}, getting)


def test_a_rejected_token_drops_the_brpop_connection_and_the_consumer_reconnects(consuming):
    """A token Redis refuses never raises out of the read (the message is delivered): the
    connection is dropped, and the next BRPOP reconnects with the provider's current credentials."""
    c = consuming
    getting = c.consumer.get_in_background()
    blocked = brpop_client(c.admin)
    c.provider.rotate("bob", "not-" + c.passwords["bob"], then=("bob", c.passwords["bob"]))
    c.deliver({"n": 1}, getting)
    wait_for(lambda: client(c.admin, blocked["id"]) is None, 10, "the connection with the refused token dropped")

    getting = c.consumer.get_in_background()
    again = brpop_client(c.admin)
    assert again["id"] != blocked["id"] and again["user"] == "bob", again
    c.deliver({"n": 2}, getting)


def test_the_copy_still_says_which_kombu_it_mirrors():
    """The module's docstring and COPIED_FROM name the same version the methods' docstrings do."""
    source = (ROOT / "runner/worker/transport.py").read_text()
    assert set(re.findall(r"kombu's own \((\d+\.\d+)\)", source)) == {COPIED_FROM}
