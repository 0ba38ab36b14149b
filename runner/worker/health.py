"""The worker's own HTTP server (worker.metrics_host:worker.metrics_port, a thread) and its
heartbeat in the store.

  /metrics   Prometheus text (runner/worker/worker_metrics.py)
  /healthz   200 while the process runs (liveness: only a hung or dead process fails it)
  /readyz    200 when Redis answers within a second, every executor passed its check, and the
             worker is not draining; else 503 naming why. Draining starts the moment SIGTERM
             arrives (or POST /drain) and lasts until the process exits; its answer says how
             many builds still run ("running": N, "drained": true at 0).
  POST /drain  from the same host only (the peer is a loopback address): start the drain, as
             SIGTERM would (runner/worker/drain.py); 202. `runner drain` (a preStop hook) sends
             it and waits for "drained". Anyone else gets 403: the port is open to Prometheus.

The heartbeat says every HEARTBEAT_INTERVAL seconds which executors this worker serves, so
`runner serve` can export runner_workers{executor} (a worker that dies stops counting once
its heartbeat lapses, HEARTBEAT_TTL)."""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from runner.store.redis_clients import probe_client
from runner.worker.worker import Worker
from runner.worker.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 1.0  # seconds /readyz waits for Redis
HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_TTL = 20.0


def local_peer(address: str) -> bool:
    """Is a peer's address this host's loopback (an IPv4 address mapped into IPv6 included)?"""
    try:
        return ipaddress.ip_address(address.removeprefix("::ffff:")).is_loopback
    except ValueError:
        return False


class Readiness:
    """What /readyz answers. Redis is asked at each probe with a client of its own that
    never retries, so an outage shows within PROBE_TIMEOUT (the job store's client rides
    out outages for a minute, which is right for jobs and wrong for a probe)."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.draining = threading.Event()
        # decodes: also read by /metrics (the open circuits)
        self.redis = probe_client(worker.settings.redis_target(), PROBE_TIMEOUT, decode_responses=True)

    def check(self) -> tuple[bool, str]:
        if self.draining.is_set():
            running = len(self.worker.running_jobs())
            return False, f"draining: takes no new builds; {running} running" if running else "drained: no build running"
        if self.worker.unusable:
            return False, "; ".join(f"executor {name} cannot work here: {why}" for name, why in sorted(self.worker.unusable.items()))
        try:
            self.redis.ping()
        except redis.RedisError:
            return False, "Redis is unreachable"
        return True, "ready"


class HealthServer:
    """/metrics, /healthz and /readyz on a thread of their own."""

    def __init__(self, host: str, port: int, metrics: WorkerMetrics, readiness: Readiness,
                 on_drain: Callable[[str], None] = lambda why: None):
        self.metrics, self.readiness, self.on_drain = metrics, readiness, on_drain
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="runner-health", daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name for it
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, server.metrics.exposition(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._json(200, {"status": "ok"})
                elif path == "/readyz":
                    ready, why = server.readiness.check()
                    body: dict = {"status": "ready" if ready else "unready", "reason": why}
                    if server.readiness.draining.is_set():
                        running = len(server.readiness.worker.running_jobs())
                        body.update(running=running, drained=running == 0)
                    self._json(200 if ready else 503, body)
                else:
                    self._json(404, {"error": "not_found", "message": "try /metrics, /healthz or /readyz"})

            def do_POST(self) -> None:  # http.server's name for it
                if self.path.split("?", 1)[0] != "/drain":
                    self._json(404, {"error": "not_found", "message": "POST /drain is the only POST"})
                elif not local_peer(self.client_address[0]):
                    self._json(403, {"error": "forbidden", "message": "POST /drain is taken from this host only"})
                else:
                    server.on_drain("POST /drain from this host (a preStop hook: runner drain)")
                    self._json(202, {"status": "draining"})

            def _json(self, status: int, body: dict) -> None:
                self._send(status, json.dumps(body).encode(), "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # probes every few seconds are not news
                pass

        return Handler


class Heartbeat(threading.Thread):
    """Tells the store every HEARTBEAT_INTERVAL which executors this worker serves (those
    whose check passed); `stop` takes the worker off at once."""

    def __init__(self, worker: Worker):
        super().__init__(daemon=True, name="runner-heartbeat")
        self.worker = worker
        self.executors = [name for name in worker.executors if name not in worker.unusable]
        self.stopped = threading.Event()

    def run(self) -> None:
        failing = False
        while not self.stopped.is_set():
            try:
                self.worker.store.heartbeat(self.worker.id, self.executors, HEARTBEAT_TTL)
                if failing:
                    log.info("heartbeat: Redis answers again")
                failing = False
            except Exception as exc:  # noqa: BLE001 - Redis away: say so once, keep trying
                if not failing:
                    log.warning("heartbeat failed (it retries every %.0fs): %s", HEARTBEAT_INTERVAL, exc)
                failing = True
            self.stopped.wait(HEARTBEAT_INTERVAL)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop, and take this worker off the live list (given up after `timeout` if Redis is away)."""
        self.stopped.set()

        def retire() -> None:
            try:
                self.worker.store.retire(self.worker.id, self.executors)
            except Exception as exc:  # noqa: BLE001 - it lapses by itself after HEARTBEAT_TTL
                log.warning("could not take this worker off the live list: %s", exc)

        leaving = threading.Thread(target=retire, name="runner-retire", daemon=True)
        leaving.start()
        leaving.join(timeout)


class WorkerService:
    """The worker's presence beyond its queues: the HTTP server (unless metrics_port is 0)
    and the heartbeat."""

    def __init__(self, worker: Worker, metrics: WorkerMetrics, on_drain: Callable[[str], None] = lambda why: None):
        self.worker, self.metrics, self.on_drain = worker, metrics, on_drain
        self.readiness = Readiness(worker)
        metrics.ready = lambda: self.readiness.check()[0]  # runner_worker_ready
        metrics.draining = self.readiness.draining.is_set  # runner_worker_draining
        self.heartbeat = Heartbeat(worker)
        self.server: HealthServer | None = None

    def start(self) -> None:
        config = self.worker.settings.worker
        if config.metrics_port:
            try:
                self.server = HealthServer(config.metrics_host, config.metrics_port, self.metrics, self.readiness, self.on_drain)
            except OSError as exc:
                log.error("cannot serve /metrics, /healthz and /readyz on %s:%d (%s); running without them",
                          config.metrics_host, config.metrics_port, exc.strerror or exc)
            else:
                self.server.start()
                log.info("serving /metrics, /healthz and /readyz on %s:%d", config.metrics_host, self.server.port)
        self.heartbeat.start()

    def drain(self) -> None:
        """The drain began: /readyz answers 503 from now on."""
        self.readiness.draining.set()

    def stop(self) -> None:
        """The worker is stopping: off the live list. The HTTP server stays until the process
        exits, so /healthz answers to the end."""
        self.heartbeat.stop()
