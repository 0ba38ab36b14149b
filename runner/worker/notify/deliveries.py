"""Delivering what the outbox holds (runner/store/outbox.py): one attempt per `runner.deliver`
task, and the scheduler that sends the task again when a retry is due.

An attempt: take the delivery (in order within its job, under its group's lock), build the
request from the job's record as it is now and the config (tokens and secrets read at use),
send it, and then either finish the delivery (delivered, or refused for good) or put it back
with the time of its next try: exponential backoff from `backoff`, doubling up to
`max_backoff`, of which a random half is jitter, and never less than a Retry-After. A
delivery gives up after `attempts` requests or past `deadline` seconds from its moment: it is
logged and counted (Outbox.gave_up), and never changes the job.

A status attempt after the first (a retry, or the attempt after one whose worker was killed
mid-request) first lists the commit's statuses: if the host shows it already (a slow answer
that timed out, a worker that died before it heard the answer), it is not posted again. So
each state reaches the host once, kill -9 or not. A callback cannot be asked, so it may
arrive twice in that case, with the same webhook-id for the receiver to drop.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

from runner.config.sections import CallbacksConfig, DeliveryPolicy, StatusTarget
from runner.config.settings import Settings
from runner.core.jobs import JobRecord
from runner.core.process_log import job_fields
from runner.store.jobstore import JobStore
from runner.store.outbox import Delivery, Outbox
from runner.worker.notify import statuses
from runner.worker.notify.callbacks import callback_request, check_callback_url
from runner.worker.notify.http import Answer, Outgoing, send

log = logging.getLogger(__name__)

#: an attempt that found its group busy, or an older delivery not yet tried, is sent again when
#: the group's lock is released, or after this many seconds at the latest
POSTPONE = 2.0


@dataclass
class Plan:
    """What one attempt sends, and how it learns whether the host has it already (statuses)."""

    label: str  # status.github, callback: for logs and the give-up count
    what: str  # "status success (built and pushed 1 tag in 3 s)", "callback"
    call: Outgoing
    check: Outgoing | None = None
    update: statuses.StatusUpdate | None = None
    host: str = ""


class Skip(Exception):
    """The delivery is not made, for a reason that is no failure (statuses not configured)."""


class GiveUp(Exception):
    """The delivery cannot be made (an unreadable token file, a record gone): logged and counted."""


def backoff(attempt: int, policy: DeliveryPolicy, rand=random.random) -> float:
    """The wait after failed attempt number `attempt` (1 = the first): exponential, half of it jitter."""
    delay = min(policy.max_backoff, policy.backoff * 2 ** (attempt - 1))
    return delay / 2 + rand() * delay / 2


class Deliverer:
    """Runs delivery attempts for one worker process (made once, like its executors)."""

    def __init__(self, settings: Settings, store: JobStore, holder: str):
        self.settings, self.store, self.holder = settings, store, holder
        self.outbox = Outbox.for_store(store, settings.deliveries.recover_after)
        #: set when this process schedules something sooner than its scheduler would look
        self.wakeup = threading.Event()

    def policy(self, kind: str) -> DeliveryPolicy:
        return self.settings.statuses if kind == "status" else self.settings.callbacks

    def run(self, delivery_id: str, ticket: str) -> str:
        """One attempt of the delivery (the `runner.deliver` task). Returns what happened."""
        lock_seconds = 2 * max(self.settings.statuses.timeout, self.settings.callbacks.timeout) + 5
        # an older delivery never tried goes first, for as long as it may live (its message is
        # sent again if it was lost)
        wait_bound = max(self.settings.statuses.deadline, self.settings.callbacks.deadline)
        outcome, delivery = self.outbox.begin(delivery_id, ticket, self.holder, lock_seconds, wait_bound, POSTPONE)
        if delivery is None:  # wait and busy: sent again when the group's lock is released
            if outcome in ("wait", "busy"):
                self.wakeup.set()
            return outcome
        try:
            record = self.store.get(delivery.job_id)
            with job_fields(delivery.job_id, record.executor if record else "", self.holder):
                return self._attempt(delivery, record)
        except Exception:  # noqa: BLE001 - a bug here must not lose the delivery or crash the worker
            log.exception("delivery %s: attempt %d crashed", delivery.id, delivery.attempts)
            self._retry_or_give_up(delivery, "the attempt crashed", None, self.policy(delivery.kind), delivery.kind)
            return "crashed"
        finally:
            self.wakeup.set()  # the group's postponed deliveries may be due now

    @staticmethod
    def label(delivery: Delivery, record: JobRecord | None) -> str:
        """What a give-up is counted as: status.github, status.gitlab, status.gitea, callback."""
        source = record.request.source if record else None
        return f"status.{source.host}" if delivery.kind == "status" and source else delivery.kind

    # -- one attempt ---------------------------------------------------------------------------------
    def _attempt(self, delivery: Delivery, record: JobRecord | None) -> str:
        policy = self.policy(delivery.kind)
        try:
            if record is None:
                raise GiveUp("the job's record is gone (expired)")
            if time.time() > delivery.created + policy.deadline:
                raise GiveUp(f"past its deadline ({policy.deadline:g}s)")
            plan = self._plan(delivery, record)
        except Skip as why:
            log.info("no %s: %s", "callback" if delivery.kind == "callback" else "commit status", why)
            self.outbox.finish(delivery, self.holder, "skipped", str(why))
            return "skipped"
        except GiveUp as why:
            return self._give_up(delivery, self.label(delivery, record), str(why))
        if (delivery.resumed or delivery.attempts > 1) and plan.check is not None and self._already_there(plan, policy):
            log.info("%s is on the host already (an earlier attempt got there); not sent again", plan.what)
            self.outbox.finish(delivery, self.holder, "delivered", "found on the host after an earlier attempt")
            return "delivered"
        answer = send(plan.call, policy.timeout)
        if answer.ok or (plan.update is not None and statuses.refused_transition(plan.host, answer)
                         and plan.check is not None and self._already_there(plan, policy, same_state_only=True)):
            log.info("%s delivered to %s (HTTP %s, attempt %d)", plan.what, plan.call.shown, answer.status, delivery.attempts)
            self.outbox.finish(delivery, self.holder, "delivered", answer.reason)
            return "delivered"
        return self._retry_or_give_up(delivery, answer.reason, answer, policy, plan.label, plan)

    def _already_there(self, plan: Plan, policy: DeliveryPolicy, same_state_only: bool = False) -> bool:
        assert plan.check is not None and plan.update is not None
        listing = send(plan.check, policy.timeout)
        return listing.ok and statuses.shows(plan.host, plan.update, listing.data, same_state_only)

    def _retry_or_give_up(self, delivery: Delivery, reason: str, answer: Answer | None, policy: DeliveryPolicy, label: str,
                          plan: Plan | None = None) -> str:
        what = plan.what if plan else delivery.kind
        if answer is not None and not answer.retry:
            return self._give_up(delivery, label, f"{what} refused: {reason}")
        wait = min(max(backoff(delivery.attempts, policy), (answer.retry_after or 0) if answer else 0), policy.max_backoff)
        if delivery.attempts >= policy.attempts:
            return self._give_up(delivery, label, f"{what} failed {delivery.attempts} times (last: {reason})")
        if time.time() + wait > delivery.created + policy.deadline:
            return self._give_up(delivery, label, f"{what} failed {delivery.attempts} times and the next try would be past "
                                 f"its deadline (last: {reason})")
        log.info("%s failed (%s); retry %d in %.1fs", what, reason, delivery.attempts, wait)
        self.outbox.retry_at(delivery, self.holder, time.time() + wait, reason)
        return "retry"

    def _give_up(self, delivery: Delivery, label: str, why: str) -> str:
        log.warning("giving up delivery %s: %s", delivery.id, why)
        self.outbox.finish(delivery, self.holder, "failed", why, label)
        return "gave_up"

    # -- what to send --------------------------------------------------------------------------------
    def _plan(self, delivery: Delivery, record: JobRecord) -> Plan:
        if delivery.kind == "callback":
            return self._callback_plan(delivery, record, self.settings.callbacks)
        source = record.request.source
        if source is None:
            raise Skip("the job has no source")
        target = self.settings.statuses.target(source)
        if isinstance(target, str):
            raise Skip(target)
        return self._status_plan(delivery, record, target)

    def _status_plan(self, delivery: Delivery, record: JobRecord, target: StatusTarget) -> Plan:
        source = record.request.source
        assert source is not None
        try:
            token = target.token()
        except ValueError as exc:
            raise GiveUp(str(exc)) from None
        if not token:
            raise GiveUp(f"statuses.{source.host} token is empty")
        update = statuses.status_update(delivery.moment, record, target, self.settings.api.public_url, delivery.note)
        what = f"commit status {update.state} ({update.description}) on {source.repository}@{source.sha[:7]}"
        return Plan(f"status.{source.host}", what, statuses.post_request(source, target.api_url, token, update),
                    statuses.list_request(source, target.api_url, token, update), update, source.host)

    def _callback_plan(self, delivery: Delivery, record: JobRecord, cfg: CallbacksConfig) -> Plan:
        url = record.request.callback_url
        if not url:
            raise Skip("the job has no callback_url")
        problem = check_callback_url(url, cfg)
        if problem:
            raise GiveUp(problem)
        try:
            secret = cfg.secret_value("callbacks.secret")
            call = callback_request(url, record.model_dump_json().encode(), delivery.webhook_id, secret, int(time.time()))
        except ValueError as exc:
            raise GiveUp(str(exc)) from None
        if not secret:
            log.warning("callbacks.secret is not set; the callback to %s is unsigned", call.shown)
        return Plan("callback", f"callback ({record.status.value})", call)


class DeliveryScheduler(threading.Thread):
    """Sends the task message of every delivery whose time has come (retries, postponed attempts,
    and deliveries whose worker died): it looks when the earliest is due, at least every second."""

    def __init__(self, deliverer: Deliverer):
        super().__init__(daemon=True, name="runner-deliveries")
        self.deliverer = deliverer
        self.stopped = threading.Event()

    def run(self) -> None:
        outbox = self.deliverer.outbox
        while not self.stopped.is_set():
            pause = 1.0
            try:
                if outbox.send_due() > 0:
                    continue
                due = outbox.next_due()
                if due is not None:
                    pause = min(max(due - time.time(), 0.02), 1.0)
            except Exception as exc:  # noqa: BLE001 - Redis restarting: look again later
                log.warning("delivery scheduler: %s", exc)
            self.deliverer.wakeup.wait(pause)
            self.deliverer.wakeup.clear()

    def stop(self) -> None:
        self.stopped.set()
        self.deliverer.wakeup.set()
