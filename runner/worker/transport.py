"""Kombu's Redis transport, hardened: a queue message that is not a valid Celery message
(not JSON, wrong shape) is moved to `<queue>.invalid` and logged, instead of crashing the
worker's consumer loop (stock kombu raises out of BRPOP handling and the worker dies). It is
acked too: kombu put it in its unacked hash before the consumer refused it, and from there
Redis would hand it out again after each visibility timeout, for ever (and until then it
would hold one of the worker's prefetch slots). A task message whose body is not the call
Celery makes ([args, kwargs, embed]) is refused the same way before Celery sees it: Celery
reads part of the body only on a pool thread, where an error is swallowed, and the message
would hold a build slot for good (a body "job" unpacks into three letters and fails there).

And gated: a draining worker asks Redis for deliveries only (transport option `build_gate`).
A worker's pool has threads for its builds and more for deliveries (commit
statuses, callbacks). While it holds as many builds as it has build slots (the transport
option `build_slots`), it asks Redis for deliveries only, so a delivery never waits for a
build to end and a worker never takes more builds than its slots. Likewise, while it holds
as many deliveries as it has delivery threads (`delivery_slots`), it asks for builds only, so
deliveries to a slow host never take a build's thread; with both full it asks for nothing
(a BRPOP on a key nobody writes). When a task ends (its message is acked or rejected) a gated
BRPOP is woken at once (CLIENT UNBLOCK), so the next message is taken without waiting for the
BRPOP's timeout; a gated BRPOP also times out sooner (GATED_TIMEOUT), which bounds the wait
where the wake-up and the BRPOP cross.

The connection's credentials come from the runner's own provider (transport option
`credential_provider`: a password file is read at each connection), and `SentinelTransport`
is the same channel on kombu's Sentinel transport (the master asked of the sentinels).

`_brpop_start`, `_brpop_read` and the start of `close` are copies of kombu's own, which is why
kombu is pinned to the minor version they were copied from (pyproject.toml);
tests/test_transport.py fails when an upgrade changes kombu's originals, naming what to re-port.
COPIED_FROM is that version."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from time import monotonic

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from runner.store.jobstore import INVALID_KEEP, invalid_queue
from runner.store.redis_clients import SentinelConnection, SentinelSSLConnection

log = logging.getLogger(__name__)
DELIVERY_ERRORS = (ValueError, TypeError, KeyError, AttributeError)
GATED_TIMEOUT = 0.1  # seconds a BRPOP for deliveries only blocks while the build slots are full
COPIED_FROM = "5.7"  # the kombu minor version whose Channel methods are copied here


class Channel(kombu_redis.Channel):
    #: set from the transport options when the channel is made (not read through
    #: self.connection at each poll: while a lost connection is restored that is None)
    from_transport_options = (*kombu_redis.Channel.from_transport_options,  # type: ignore[assignment]
                              "build_slots", "build_task", "delivery_queue", "delivery_slots", "delivery_task",
                              "credential_provider", "build_gate")
    #: a redis-py CredentialProvider for every connection (the URL's user and password otherwise)
    credential_provider: object | None = None
    build_slots: int | None = None
    #: a threading.Event set when the worker drains: from then on no build is taken (runner/worker/drain.py)
    build_gate: threading.Event | None = None
    build_task: str | None = None
    delivery_queue: str | None = None
    delivery_slots: int | None = None
    delivery_task: str | None = None
    #: Redis client id of the connection blocked in a gated BRPOP (None: no gated BRPOP in flight)
    _gated_client: int | None = None
    #: (connection, its Redis client id), asked once per connection and forgotten when it reconnects
    _known_client: tuple[object, int] | None = None

    def _connparams(self, asynchronous=False):
        params = super()._connparams(asynchronous)
        if self.credential_provider is not None:
            params.pop("username", None)
            params.pop("password", None)
            params["credential_provider"] = self.credential_provider
        return params

    @staticmethod
    def _holding() -> Counter[str]:
        """Tasks this worker holds, by name: reserved, waiting for an ETA, or running."""
        from celery.worker import state

        return Counter(request.name for request in list(state.requests.values()))

    def _brpop_start(self, timeout=None):
        """kombu's own (5.7), but without the build queues while the build slots are full, and
        without the deliveries queue while the delivery threads are."""
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        connection = self.client.connection
        held = self._holding() if self.build_slots or self.delivery_slots else Counter()
        draining = self.build_gate is not None and self.build_gate.is_set()  # deliveries only from now on
        builds_full = draining or (bool(self.build_slots) and held[self.build_task] >= self.build_slots)
        deliveries_full = bool(self.delivery_slots) and held[self.delivery_task] >= self.delivery_slots
        if builds_full or deliveries_full:
            queues = [queue for queue in queues
                      if (not deliveries_full if queue == self.delivery_queue else not builds_full)]
            timeout = min(timeout or GATED_TIMEOUT, GATED_TIMEOUT)
            self._gated_client = self._client_id(connection)
        keys = ([self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
                or [f"{self.delivery_queue or 'runner'}.gate"]) + [timeout or 0]
        self._in_poll = connection
        self._brpop_sent_at = monotonic()
        command_args = ["BRPOP", *keys]
        if self.global_keyprefix:
            command_args = self.client._prefix_args(command_args)
        connection.send_command(*command_args)

    def _client_id(self, connection) -> int:
        known = self._known_client
        if known is not None and known[0] is connection:
            return known[1]
        connection.register_connect_callback(self._forget_client_id)  # a reconnect gets a new id
        connection.send_command("CLIENT", "ID")
        client_id = connection.read_response()
        self._known_client = (connection, client_id)
        return client_id

    def _forget_client_id(self, connection) -> None:
        self._known_client = None

    def _wake_gated(self) -> None:
        """A slot came free: end a gated BRPOP now (it answers as if it timed out)."""
        client_id, self._gated_client = self._gated_client, None
        if client_id is None:
            return
        try:
            with self.conn_or_acquire() as client:
                client.execute_command("CLIENT", "UNBLOCK", client_id)
        except self.connection_errors:
            pass  # the BRPOP times out by itself

    def basic_ack(self, delivery_tag, multiple=False):
        super().basic_ack(delivery_tag, multiple)
        self._wake_gated()

    def basic_reject(self, delivery_tag, requeue=False):
        super().basic_reject(delivery_tag, requeue)
        self._wake_gated()

    def close(self) -> None:
        """kombu's close first reads the answer to a BRPOP in flight; with Redis gone that read
        raises, the channel stays half-closed, and the consumer's second close (after the
        transport has dropped its client) dies with an AttributeError: the worker stops for
        good. A BRPOP is in flight whenever a worker has free threads, and the delivery threads
        are always free, so the read's connection error is let go here and the close goes on."""
        if self._in_poll:
            try:
                self._brpop_read()
            except (kombu_redis.Empty, *self.connection_errors):
                pass
        super().close()

    def _brpop_read(self, **options):
        """kombu's own (5.7), but a message that is not a valid job message is set aside and acked."""
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # reconnect on the next round
                raise
            if not dest__item:
                raise kombu_redis.Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            payload = None
            try:
                payload = loads(bytes_to_str(item))
                self._check_task_call(payload)
                self.connection._deliver(payload, dest)
            except DELIVERY_ERRORS as exc:
                self._set_aside(dest, item, exc)
                self._ack_refused(payload)
            return True
        finally:
            self._in_poll = None
            self._gated_client = None
            # kombu's: the connection is idle now (the reply read, no BRPOP sent yet), the one
            # safe moment to send AUTH with a streaming credential provider's rotated token
            # (else it waits for the transport's timer, which only the event loop runs)
            self._flush_brpop_reauth()

    def _set_aside(self, queue: str, item: bytes, exc: Exception) -> None:
        log.error("queue %s: dropped a message that is not a valid job message (%s: %s); kept in %s",
                  queue, type(exc).__name__, str(exc)[:200], invalid_queue(queue))
        try:
            with self.conn_or_acquire() as client:
                client.lpush(invalid_queue(queue), item)
                client.ltrim(invalid_queue(queue), 0, INVALID_KEEP - 1)
        except Exception as push_error:  # noqa: BLE001 - losing garbage is fine; crashing is not
            log.warning("could not keep the invalid message: %s", push_error)


    def _check_task_call(self, payload: dict) -> None:
        """Raise ValueError unless a task message's body is a call: [args, kwargs, embed]."""
        headers = payload.get("headers")
        if not isinstance(headers, dict) or "task" not in headers or headers.get("compression") \
                or payload.get("content-type") != "application/json":
            return  # not protocol 2 JSON: Celery's own checks refuse what it cannot read
        call = json.loads(self.decode_body(payload.get("body"), payload["properties"].get("body_encoding")))
        if not (isinstance(call, list) and len(call) == 3 and isinstance(call[0], list) and isinstance(call[1], dict)
                and (call[2] is None or isinstance(call[2], dict))):
            raise ValueError(f"the body is not a task call [args, kwargs, embed] but {type(call).__name__} "
                             f"{json.dumps(call)[:80]}")

    def _ack_refused(self, payload: object) -> None:
        """Ack a message that kombu took in (its unacked hash holds it) but the consumer refused."""
        try:
            tag = payload["properties"]["delivery_tag"]  # type: ignore[index]
            taken = self.qos.get(tag)
        except (TypeError, KeyError):  # not a dict, no tag, an unhashable tag, or never taken in
            return
        if taken._raw is payload:  # this very message, not another one that carries the same tag
            try:
                self.basic_ack(tag)
            except self.connection_errors as exc:
                log.warning("could not ack the refused message: %s", exc)


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """Our channel on kombu's Sentinel channel: the master is asked of the sentinels."""

    from_transport_options = tuple(dict.fromkeys((*Channel.from_transport_options,  # type: ignore[assignment]
                                                  *kombu_redis.SentinelChannel.from_transport_options)))
    #: every (re)connection asks the sentinels for the master (runner/store/redis_clients.py)
    connection_class = SentinelConnection
    connection_class_ssl = SentinelSSLConnection  # type: ignore[assignment]  # kombu names its own twin class


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
