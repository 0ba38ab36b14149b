"""Post a job the way any CI can without our code: a context under NS:ctx:ID and a Celery
protocol-2 message on the executor's queue (as examples/queue-post.sh does with redis-cli)."""

from __future__ import annotations

import base64
import json
import uuid


def celery_message(job: dict, queue: str) -> str:
    body = json.dumps([[job], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    tag = uuid.uuid4().hex
    return json.dumps({
        "body": base64.b64encode(body.encode()).decode(), "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"lang": "py", "task": "runner.build", "id": job.get("id") or tag, "root_id": tag, "parent_id": None,
                    "group": None, "retries": 0, "eta": None, "expires": None, "timelimit": [None, None]},
        "properties": {"correlation_id": tag, "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": queue},
                       "priority": 0, "body_encoding": "base64", "delivery_tag": tag},
    })


def post_raw(store, queue: str, job: dict, context: bytes | None = None) -> str:
    """Queue `job` (a BuildRequest-shaped dict) on `queue`, with `context` (tar bytes) stored first."""
    if context is not None:
        store.raw.rpush(f"{store.ns}:ctx:{job['id']}", context)
    store.r.lpush(queue, celery_message(job, queue))
    return job.get("id", "")
