"""Delivering what the outbox holds (runner/store/outbox.py): one attempt per `runner.deliver`
task, and the scheduler that sends the task again when a retry is due.

An attempt: take the delivery (in order within its job, under its group's lock), build the
request from the job's record as it is now and the config (tokens and secrets read at use),
send it, and then either finish the delivery (delivered, or refused for good) or put it back
with the time of its next try: exponential backoff from `backoff`, doubling up to
`max_backoff`, of which a random half is jitter, and never less than a Retry-After. An
interim state (a status queued, started, requeued) gives up after `attempts` requests or past
`deadline` seconds from its moment; a final state (the job's last status, its callback) is
tried, attempts unbounded, until `final_deadline` (a day by default). A delivery that gives up
is logged and counted (Outbox.gave_up), and never changes the job.

Hosts: each has a circuit shared by every worker (runner/store/circuits.py). Once a host fails
`deliveries.circuit_failures` requests in a row, its deliveries park instead of retrying on
their own, one probe per backoff step asks whether it is back, and when it answers every
parked delivery is due at once. An interim state parked behind a newer state of its job is
dropped (the newer one is what the host is told).

Time: an attempt makes at most REQUESTS_PER_ATTEMPT requests, each bounded by `timeout` as a
whole (runner/worker/notify/http.py) and all of them by the attempt's own deadline, and the
group's lock outlives that deadline by LOCK_MARGIN. So no other attempt of the same delivery
starts while a request of this one may still land.

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
from urllib.parse import urlsplit

from runner.config.sections import CallbacksConfig, DeliveryPolicy, StatusTarget
from runner.config.settings import Settings
from runner.core.jobs import JobRecord
from runner.core.process_log import job_fields
from runner.store.circuits import Circuits
from runner.store.jobstore import JobStore
from runner.store.outbox import Delivery, Outbox
from runner.worker.notify import statuses
from runner.worker.notify.addresses import AddressRule
from runner.worker.notify.callbacks import address_rule, callback_request, check_callback_url
from runner.worker.notify.http import Answer, Outgoing, send

log = logging.getLogger(__name__)

#: an attempt that found its group busy, or an older delivery not yet tried, is sent again when
#: the group's lock is released, or after this many seconds at the latest
POSTPONE = 2.0
#: requests one attempt may make: a status's listing, its POST, a second listing (GitLab's refusal)
REQUESTS_PER_ATTEMPT = 3
#: how much longer a delivery's lock lives than its attempt's requests may take
LOCK_MARGIN = 5.0


@dataclass
class Plan:
    """What one attempt sends, and how it learns whether the host has it already (statuses)."""

    label: str  # status.github, callback: for logs and the give-up count
    what: str  # "status success (built and pushed 1 tag in 3 s)", "callback"
    call: Outgoing
    check: Outgoing | None = None
    update: statuses.StatusUpdate | None = None
    host: str = ""  # the git host's kind, for statuses (github, gitlab, gitea)
    origin: str = ""  # scheme://host:port: whose circuit the requests count on
    origin_label: str = ""  # the circuit's label in metrics: a status API's host, or "callbacks"
    rule: AddressRule | None = None  # where a callback may connect (None: anywhere)


def origin(url: str) -> str:
    """scheme://host:port of a URL (the key of its host's circuit)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def is_final(delivery: Delivery) -> bool:
    """A job's last word: its final commit status, or its callback (kept until final_deadline)."""
    return delivery.kind == "callback" or delivery.moment == "finished"


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
        config = settings.deliveries
        longest = max(settings.statuses.final_deadline, settings.callbacks.final_deadline)
        self.circuits = Circuits(store.r, store.ns, self.outbox.outbox_key, config.circuit_failures, config.circuit_backoff,
                                 config.circuit_max_backoff, int(longest) + 3600)
        #: set when this process schedules something sooner than its scheduler would look
        self.wakeup = threading.Event()

    def policy(self, kind: str) -> DeliveryPolicy:
        return self.settings.statuses if kind == "status" else self.settings.callbacks

    @property
    def lock_seconds(self) -> float:
        """How long an attempt holds its group's lock: past its last request's hard deadline."""
        return REQUESTS_PER_ATTEMPT * max(self.settings.statuses.timeout, self.settings.callbacks.timeout) + LOCK_MARGIN

    def gives_up_at(self, delivery: Delivery) -> float:
        policy = self.policy(delivery.kind)
        return delivery.created + (policy.final_deadline if is_final(delivery) else policy.deadline)

    def run(self, delivery_id: str, ticket: str) -> str:
        """One attempt of the delivery (the `runner.deliver` task). Returns what happened."""
        began = time.monotonic()
        # an older delivery never tried goes first, for as long as it may live (its message is
        # sent again if it was lost): an interim status, as a job's final state is its last
        wait_bound = self.settings.statuses.deadline
        outcome, delivery = self.outbox.begin(delivery_id, ticket, self.holder, self.lock_seconds, wait_bound, POSTPONE)
        if delivery is None:  # wait and busy: sent again when the group's lock is released
            if outcome in ("wait", "busy"):
                self.wakeup.set()
            return outcome
        until = began + REQUESTS_PER_ATTEMPT * self.policy(delivery.kind).timeout
        try:
            record = self.store.get(delivery.job_id)
            with job_fields(delivery.job_id, record.executor if record else "", self.holder):
                return self._attempt(delivery, record, until)
        except Exception:  # noqa: BLE001 - a bug here must not lose the delivery or crash the worker
            log.exception("delivery %s: attempt %d crashed", delivery.id, delivery.attempts)
            self._after_failure(delivery, "the attempt crashed", None, self.policy(delivery.kind), delivery.kind)
            return "crashed"
        finally:
            self.wakeup.set()  # the group's postponed deliveries may be due now

    @staticmethod
    def label(delivery: Delivery, record: JobRecord | None) -> str:
        """What a give-up is counted as: status.github, status.gitlab, status.gitea, callback."""
        source = record.request.source if record else None
        return f"status.{source.host}" if delivery.kind == "status" and source else delivery.kind

    # -- one attempt ---------------------------------------------------------------------------------
    def _attempt(self, delivery: Delivery, record: JobRecord | None, until: float) -> str:
        policy = self.policy(delivery.kind)
        try:
            if record is None:
                raise GiveUp("the job's record is gone (expired)")
            if time.time() > self.gives_up_at(delivery):
                which = "final_deadline" if is_final(delivery) else "deadline"
                raise GiveUp(f"past its {which} ({policy.final_deadline if is_final(delivery) else policy.deadline:g}s)")
            plan = self._plan(delivery, record)
        except Skip as why:
            log.info("no %s: %s", "callback" if delivery.kind == "callback" else "commit status", why)
            self.outbox.finish(delivery, self.holder, "skipped", str(why))
            return "skipped"
        except GiveUp as why:
            return self._give_up(delivery, self.label(delivery, record), str(why))
        if self.circuits.enabled and self.circuits.gate(plan.origin, delivery.id, self.lock_seconds) == "open":
            return self._park(delivery, plan, f"{plan.origin_label}'s circuit is open", attempted=False)
        if (delivery.resumed or delivery.attempts > 1) and plan.check is not None:
            listing, circuit_open = self._send(plan, plan.check, policy, until, delivery)
            if listing.host_failed:
                return self._after_failure(delivery, listing.reason, listing, policy, plan.label, plan, circuit_open)
            if self._shows(plan, listing):
                log.info("%s is on the host already (an earlier attempt got there); not sent again", plan.what)
                self.outbox.finish(delivery, self.holder, "delivered", "found on the host after an earlier attempt")
                return "delivered"
        answer, circuit_open = self._send(plan, plan.call, policy, until, delivery)
        if answer.ok or (plan.update is not None and statuses.refused_transition(plan.host, answer)
                         and plan.check is not None
                         and self._shows(plan, self._send(plan, plan.check, policy, until, delivery)[0], same_state_only=True)):
            log.info("%s delivered to %s (HTTP %s, attempt %d)", plan.what, plan.call.shown, answer.status, delivery.attempts)
            self.outbox.finish(delivery, self.holder, "delivered", answer.reason)
            return "delivered"
        return self._after_failure(delivery, answer.reason, answer, policy, plan.label, plan, circuit_open)

    def _send(self, plan: Plan, call: Outgoing, policy: DeliveryPolicy, until: float, delivery: Delivery) -> tuple[Answer, bool]:
        """Make one request (bounded by `policy.timeout` and the attempt's `until`) and tell the
        host's circuit how it went. Returns the answer and whether the circuit is open now."""
        answer = send(call, policy.timeout, until, plan.rule)
        if not self.circuits.enabled or answer.blocked:
            return answer, False
        if answer.host_failed:
            return answer, self.circuits.failed(plan.origin, plan.origin_label, delivery.id, answer.retry_after)
        if self.circuits.succeeded(plan.origin):
            log.info("%s answers again: its parked deliveries are due", plan.origin_label)
            self.wakeup.set()
        return answer, False

    @staticmethod
    def _shows(plan: Plan, listing: Answer, same_state_only: bool = False) -> bool:
        assert plan.update is not None
        return listing.ok and statuses.shows(plan.host, plan.update, listing.data, same_state_only)

    def _after_failure(self, delivery: Delivery, reason: str, answer: Answer | None, policy: DeliveryPolicy, label: str,
                       plan: Plan | None = None, circuit_open: bool = False) -> str:
        what = plan.what if plan else delivery.kind
        if answer is not None and not answer.retry:
            return self._give_up(delivery, label, f"{what} refused: {reason}")
        if not is_final(delivery) and delivery.attempts >= policy.attempts:
            return self._give_up(delivery, label, f"{what} failed {delivery.attempts} times (last: {reason})")
        if circuit_open and plan is not None:
            return self._park(delivery, plan, reason, attempted=True)
        wait = min(max(backoff(delivery.attempts, policy), (answer.retry_after or 0) if answer else 0), policy.max_backoff)
        if time.time() + wait > self.gives_up_at(delivery):
            return self._give_up(delivery, label, f"{what} failed {delivery.attempts} times and the next try would be past "
                                 f"its deadline (last: {reason})")
        log.info("%s failed (%s); retry %d in %.1fs", what, reason, delivery.attempts, wait)
        self.outbox.retry_at(delivery, self.holder, time.time() + wait, reason)
        return "retry"

    def _park(self, delivery: Delivery, plan: Plan, reason: str, attempted: bool) -> str:
        """Wait for the host's circuit to close; an interim state behind a newer one is dropped instead."""
        outcome = self.outbox.park(delivery, self.holder, self.circuits.keys(plan.origin), plan.origin,
                                   self.gives_up_at(delivery) + 1, f"waiting for {plan.origin_label}: {reason}",
                                   interim=not is_final(delivery), attempted=attempted)
        if outcome == "due":
            self.wakeup.set()
            return "retry"
        log.info("%s %s: %s", plan.what, "dropped for a newer state" if outcome == "superseded" else "waits for its host",
                 reason)
        return outcome

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
                    statuses.list_request(source, target.api_url, token, update), update, source.host,
                    origin(target.api_url), urlsplit(target.api_url).netloc.lower())

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
        return Plan("callback", f"callback ({record.status.value})", call, origin=origin(url), origin_label="callbacks",
                    rule=address_rule(url, cfg))


class DeliveryScheduler(threading.Thread):
    """Sends the task message of every delivery whose time has come (retries, postponed attempts,
    deliveries whose worker died, each open circuit's probe, the parked deliveries of a circuit
    that closed): it looks when the earliest is due, at least every second."""

    def __init__(self, deliverer: Deliverer):
        super().__init__(daemon=True, name="runner-deliveries")
        self.deliverer = deliverer
        self.stopped = threading.Event()

    def run(self) -> None:
        outbox, circuits = self.deliverer.outbox, self.deliverer.circuits
        while not self.stopped.is_set():
            pause = 1.0
            try:
                if circuits.enabled:
                    circuits.tick(self.deliverer.lock_seconds)  # probes due, and the parked of circuits that closed
                if outbox.send_due() > 0:
                    continue
                due = min((t for t in (outbox.next_due(), circuits.next_look() if circuits.enabled else None)
                           if t is not None), default=None)
                if due is not None:
                    pause = min(max(due - time.time(), 0.02), 1.0)
            except Exception as exc:  # noqa: BLE001 - Redis restarting: look again later
                log.warning("delivery scheduler: %s", exc)
            self.deliverer.wakeup.wait(pause)
            self.deliverer.wakeup.clear()

    def stop(self) -> None:
        self.stopped.set()
        self.deliverer.wakeup.set()
