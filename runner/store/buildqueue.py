"""Task messages written straight to Redis: what Celery would send for `runner.build` (and
for `runner.deliver`, runner/store/outbox.py), without importing Celery (~150 ms and ~25 MB
that `runner submit`, the API and webhooks do not need).

The shape is Celery's task protocol 2 on kombu's Redis transport, the same one README's
"job message" section documents for any CI: a JSON envelope LPUSHed onto the queue's list,
whose base64 body is `[[job], {}, {embed}]`. The worker consumes it with Celery as usual
(and sends delayed requeues through Celery itself, runner/worker/queue.py).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

import redis

TASK_NAME = "runner.build"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def build_message(job: dict[str, Any], queue: str) -> str:
    """The protocol-2 message carrying `job` (a BuildRequest as JSON; its id is the task id)."""
    return task_message(TASK_NAME, [job], job["id"], queue, f"[job {job['id']}]")  # build args stay out of the headers


def task_message(task: str, args: list[Any], task_id: str, queue: str, argsrepr: str) -> str:
    """Celery's protocol-2 message for `task(*args)` on `queue` (`argsrepr`: what Celery logs of the args)."""
    body = json.dumps([args, {}, _EMBED])
    return json.dumps({
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None, "expires": None,
            "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
            "root_id": task_id, "parent_id": None,
            "argsrepr": argsrepr, "kwargsrepr": "{}",
            "origin": f"gen{os.getpid()}@{socket.gethostname()}", "ignore_result": None,
            "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
        },
        "properties": {
            "correlation_id": task_id, "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    })


def send_build(client: redis.Redis, job: dict[str, Any], queue: str) -> None:
    """Queue `job` on `queue` (kombu keeps priority 0 messages in a list named as the queue;
    the worker pops from the right)."""
    client.lpush(queue, build_message(job, queue))
