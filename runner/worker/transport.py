"""Kombu's Redis transport, hardened: a queue message that is not a valid Celery message
(not JSON, wrong shape) is moved to `<queue>.invalid` and logged, instead of crashing the
worker's consumer loop (stock kombu raises out of BRPOP handling and the worker dies)."""

from __future__ import annotations

import logging

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from runner.store.jobstore import INVALID_KEEP, invalid_queue

log = logging.getLogger("runner.transport")
DELIVERY_ERRORS = (ValueError, TypeError, KeyError, AttributeError)


class Channel(kombu_redis.Channel):
    def _brpop_read(self, **options):
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
            try:
                self.connection._deliver(loads(bytes_to_str(item)), dest)
            except DELIVERY_ERRORS as exc:
                self._set_aside(dest, item, exc)
            return True
        finally:
            self._in_poll = None

    def _set_aside(self, queue: str, item: bytes, exc: Exception) -> None:
        log.error("queue %s: dropped a message that is not a valid job message (%s: %s); kept in %s",
                  queue, type(exc).__name__, str(exc)[:200], invalid_queue(queue))
        try:
            with self.conn_or_acquire() as client:
                client.lpush(invalid_queue(queue), item)
                client.ltrim(invalid_queue(queue), 0, INVALID_KEEP - 1)
        except Exception as push_error:  # noqa: BLE001 - losing garbage is fine; crashing is not
            log.warning("could not keep the invalid message: %s", push_error)


class Transport(kombu_redis.Transport):
    Channel = Channel
