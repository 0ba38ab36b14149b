"""The Celery app and its two tasks. Thin: each hands its work to the code that does it.

Nothing else imports Celery, so the rest of the core is testable without a worker.
`runner.build`: its one positional argument is the BuildRequest as a JSON object; queues
`<namespace>.<executor>` (default `runner.buildah`, `runner.socket`, ...); the pipeline runs it.
`runner.deliver`: (delivery id, ticket) on `<namespace>.deliveries`, written by the outbox
(runner/store/outbox.py); one attempt of a commit status or callback (runner/worker/notify).
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import TYPE_CHECKING, Any

from celery import Celery
from pydantic import ValidationError

from runner.config.redis_target import RedisTarget
from runner.config.settings import Settings
from runner.core.jobs import BuildRequest
from runner.store.buildqueue import TASK_NAME
from runner.store.outbox import DELIVER_TASK, deliveries_queue
from runner.store.redis_clients import TargetCredentials, has_credentials, sentinel_options
from runner.worker.notify.deliveries import Deliverer
from runner.worker.pipeline import Pipeline

if TYPE_CHECKING:
    from runner.worker.worker import Worker

log = logging.getLogger(__name__)


def make_app(settings: Settings, worker: Worker | None = None, deliverer: Deliverer | None = None,
             build_slots: int | None = None, build_gate: threading.Event | None = None) -> Celery:
    """The Celery app; with `worker`, it also defines the tasks that worker runs (deliveries with
    `deliverer`, or one of its own). The entry points send jobs without Celery
    (runner.store.buildqueue); the worker's requeues use it. `build_slots`: builds this worker
    takes at once (its other threads, deliveries.concurrency of them, are for deliveries only:
    runner.worker.transport's gate); `build_gate`: set when the worker drains, and no build is
    taken from then on."""
    broker = broker_settings(settings.redis_target())
    app = Celery("runner", broker=broker.pop("broker_url"), set_as_current=True)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,                    # a killed worker's job is redelivered, not lost
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,           # a busy worker never hoards queued builds
        task_track_started=True,
        task_ignore_result=True,                # the job store holds results
        broker_transport_options={
            **broker.pop("broker_transport_options"),
            # longer than the longest allowed job, so Redis never redelivers a running build
            "visibility_timeout": settings.limits.max_timeout + 3600,
            "socket_keepalive": True,
            "retry_on_timeout": True,
            # builds in hand at once, and deliveries: neither ever takes the other's threads
            "build_slots": build_slots,
            "build_gate": build_gate,
            "build_task": TASK_NAME,
            "delivery_queue": deliveries_queue(settings.worker.namespace),
            "delivery_slots": settings.deliveries.concurrency if build_slots else None,
            "delivery_task": DELIVER_TASK,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,     # survive Redis restarts
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_default_queue=settings.queue_for(settings.default_executor),
        **broker,
    )

    if worker is None:
        return app

    @app.task(name=TASK_NAME, bind=True, acks_late=True)
    def build(self, payload: dict) -> str:
        pipeline = Pipeline(worker, requeuer(self.app, settings))
        try:
            request = BuildRequest.model_validate(payload)
        except ValidationError as exc:
            queue = (self.request.delivery_info or {}).get("routing_key") or settings.queue_for(settings.default_executor)
            pipeline.refuse_payload(payload, queue, exc)
            return "invalid"
        return pipeline.run(request).status.value

    deliveries = deliverer or Deliverer(settings, worker.store, worker.id)

    @app.task(name=DELIVER_TASK, acks_late=True)
    def deliver(delivery_id: str, ticket: str) -> str:
        return deliveries.run(delivery_id, ticket)

    return app


def broker_settings(target: RedisTarget) -> dict[str, Any]:
    """Celery's broker settings for the target: our transport (it survives garbage on the
    queue), on kombu's Sentinel transport with Sentinel; TLS; credentials through our provider."""
    options: dict[str, Any] = {}
    if has_credentials(target):
        options["credential_provider"] = TargetCredentials(target)
    broker: dict[str, Any] = {"broker_transport": "runner.worker.transport:Transport", "broker_url": target.url}
    if target.sentinel is not None:
        broker["broker_transport"] = "runner.worker.transport:SentinelTransport"
        broker["broker_url"] = ";".join(f"sentinel://{host}:{port}/{target.db}" for host, port in target.sentinel.nodes)
        options.update(master_name=target.sentinel.master, sentinel_kwargs=sentinel_options(target))
    if target.uses_tls:
        files = target.tls
        broker["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": files.ca_file,
                                    "ssl_certfile": files.cert_file, "ssl_keyfile": files.key_file,
                                    "ssl_check_hostname": files.check_hostname}
    broker["broker_transport_options"] = options
    return broker


def enqueue(app: Celery, request: BuildRequest, queue: str, delay: float = 0) -> None:
    """Send the job's message through Celery (a delay needs its eta handling); the task id is
    the job id. The message without delay is the one runner.store.buildqueue writes."""
    app.send_task(TASK_NAME, args=[request.model_dump(mode="json")], queue=queue, task_id=request.id,
                  countdown=delay or None,
                  argsrepr=f"[job {request.id}]", kwargsrepr="{}")  # build args stay out of the headers


def requeuer(app: Celery, settings: Settings):
    """A function that sends a job back to its executor's queue (see pipeline.Requeue)."""

    def requeue(request: BuildRequest, delay: float) -> None:
        enqueue(app, request, settings.queue_for(request.executor or settings.default_executor), delay)

    return requeue
