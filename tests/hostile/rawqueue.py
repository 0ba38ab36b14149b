"""Post a job the way any CI can without our code: a context under NS:ctx:ID and a Celery
protocol-2 message on the executor's queue (as examples/queue-post.sh does with redis-cli)."""

from __future__ import annotations

import base64
import json
import uuid


def celery_message(job: dict, queue: str) -> str:
    body = json.dumps([[job], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    return message_with_body(body, queue, job.get("id") or uuid.uuid4().hex)[1]


def message_with_body(body: str, queue: str, task_id: str | None = None) -> tuple[str, str]:
    """(delivery tag, a message for `queue` whose body is `body`, whatever it holds)."""
    tag = uuid.uuid4().hex
    return tag, json.dumps({
        "body": base64.b64encode(body.encode()).decode(), "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"lang": "py", "task": "runner.build", "id": task_id or tag, "root_id": tag, "parent_id": None,
                    "group": None, "retries": 0, "eta": None, "expires": None, "timelimit": [None, None]},
        "properties": {"correlation_id": tag, "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": queue},
                       "priority": 0, "body_encoding": "base64", "delivery_tag": tag},
    })


def post_body(store, queue: str, body: str) -> str:
    """Queue a runner.build message whose body is `body` (not necessarily Celery's [args, kwargs,
    embed]); returns its delivery tag."""
    tag, message = message_with_body(body, queue)
    store.r.lpush(queue, message)
    return tag


def post_raw(store, queue: str, job: dict, context: bytes | None = None) -> str:
    """Queue `job` (a BuildRequest-shaped dict) on `queue`, with `context` (tar bytes) stored first."""
    if context is not None:
        store.raw.rpush(f"{store.ns}:ctx:{job['id']}", context)
    store.r.lpush(queue, celery_message(job, queue))
    return job.get("id", "")
