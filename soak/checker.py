"""The promises, checked over a soak's whole history. Pure: the history, the faults that
happened and what was read from the system after the run in, violations out.

Every request: one final answer by its deadline + 2 s (200, or problem+json 4xx/503/504; an
invalid input its own 4xx), every 200 its own request's; an Idempotency-Key: one entry, one
result for every answer, work run again only where a fault explains it (a worker or Redis
node that died, froze or was cut off while the entry was in hand); an async request: a
result readable until its TTL, except a loss the topology cannot prevent, named with its
fault; after the run: nothing pending, no stuck consumer, streams within their bounds,
memory and metric series flat."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from soak.faults import Happened
from soak.system import Execution
from soak.traffic import Attempt, Request

# A grace on every deadline: the proxy answers at its deadline, the network and the test
# host's threads add a little.
DEADLINE_GRACE_SECONDS = 2.0
# One Redis fsyncing its append-only file every second loses up to that much when killed;
# the kill is seen a little after the process stops writing.
FSYNC_LOSS_SECONDS = 2.0
MEMORY_GROWTH_LIMIT = 1.2
SERIES_LIMIT = 2000  # per process: every label value of every family, several times over
VALID_FINAL = {200, 503, 504}
ASYNC_FINAL = {200, 504}
EXECUTION_FAULTS = ("worker-kill", "worker-term", "worker-freeze", "redis-kill", "redis-restart", "redis-freeze",
                    "redis-partition", "slow-link")


@dataclass
class Violation:
    rule: str
    detail: str
    request: Request | None = None


@dataclass
class Loss:
    """Something lost that the topology cannot prevent, and the fault that explains it."""
    what: str
    fault: Happened


@dataclass
class AfterRun:
    """What the system held once the load had stopped and the workers had drained it."""
    pending: dict[str, int] = field(default_factory=dict)  # stream -> entries pending
    # stream -> (entries after the group's last delivered one, the group's lag as Redis says)
    undelivered: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    consumers_holding: dict[str, int] = field(default_factory=dict)  # consumer -> pending entries
    stream_overruns: dict[str, str] = field(default_factory=dict)  # stream -> how it exceeds its bound
    memory: dict[str, tuple[int, int]] = field(default_factory=dict)  # process -> (after warm-up, at the end)
    memory_midway: dict[str, int] = field(default_factory=dict)  # process -> halfway between (reported only)
    series: dict[str, tuple[int, int]] = field(default_factory=dict)  # process -> (after warm-up, at the end)
    id_labels: list[str] = field(default_factory=list)  # series whose labels carry a request id or key
    dead_letters: int = 0
    redis_complaints: list[str] = field(default_factory=list)  # refused commands, AOF blocks not replayed
    # Asked once the faults were over and the load had stopped: every shard must serve again.
    afterwards: list[Request] = field(default_factory=list)


@dataclass
class Verdict:
    violations: list[Violation]
    losses: list[Loss]
    extra_executions: list[tuple[Execution, Happened]]


class Checker:
    def __init__(self, history: list[Request], faults: list[Happened], executions: list[Execution], *,
                 topology: str, replicas_confirm: bool, claim_idle_seconds: float) -> None:
        self._history = history
        self._faults = faults
        self._executions = executions
        self._topology = topology
        self._replicas_confirm = replicas_confirm
        self._claim_idle = claim_idle_seconds
        self.violations: list[Violation] = []
        self.losses: list[Loss] = []
        self.extra_executions: list[tuple[Execution, Happened]] = []

    def check(self, after: AfterRun) -> Verdict:
        for request in self._history:
            self._answered(request)
            if request.kind == "async":
                self._async_result(request)
        self._idempotency()
        self._after_run(after)
        return Verdict(self.violations, self.losses, self.extra_executions)

    def _fail(self, rule: str, detail: str, request: Request | None = None) -> None:
        self.violations.append(Violation(rule, detail, request))

    def _fault_between(self, kinds: tuple[str, ...], start: float, end: float) -> Happened | None:
        for fault in self._faults:
            if fault.kind in kinds and fault.at <= end and (fault.ended if fault.ended is not None else end) >= start:
                return fault
        return None

    # --- each request -------------------------------------------------------------------
    def _answered(self, request: Request) -> None:
        if not request.attempts:
            self._fail("answered", "never sent", request)
            return
        for attempt in request.attempts[:-1]:
            # Only a broken connection is retried: it must be a proxy process that went away.
            if not self._fault_between(("proxy-kill", "proxy-term"), attempt.sent - 1, attempt.answered + 1):
                self._fail("answered", f"connection broken with no proxy fault: {attempt.error}", request)
        final = request.final
        assert final is not None
        if final.status is None:
            self._fail("answered", f"no answer: {final.error}", request)
            return
        took = final.answered - final.sent
        if took > request.deadline_seconds + DEADLINE_GRACE_SECONDS and request.kind != "async":
            self._fail("deadline", f"answered {final.status} after {took:.1f} s (deadline "
                       f"{request.deadline_seconds:g} s)", request)
        if request.kind == "async" and took > DEADLINE_GRACE_SECONDS + 10:
            self._fail("deadline", f"the 202 took {took:.1f} s", request)
        self._answer_is_right(request, final)

    def _answer_is_right(self, request: Request, answer: Attempt) -> None:
        status = answer.status
        if request.invalid:
            expected_status, expected_error = request.expected or (0, "")
            got = answer.body.get("error") if isinstance(answer.body, dict) else None
            if (status, got) != (expected_status, expected_error) and (status, got) != (503, "overloaded"):
                self._fail("invalid input", f"{request.invalid}: got {status} {got}, expected {expected_status} "
                           f"{expected_error}", request)
            return
        allowed = {202, 503} if request.kind == "async" else VALID_FINAL
        if status not in allowed:
            self._fail("final answer", f"status {status}: {answer.body}", request)
        if status == 200:
            self._echoes(request, answer)
        elif status is not None and status >= 400 and not (
                answer.content_type.startswith("application/problem+json") and isinstance(answer.body, dict)
                and answer.body.get("error")):
            self._fail("problem+json", f"{status} with {answer.content_type!r}: {answer.body}", request)

    def _echoes(self, request: Request, answer: Attempt) -> None:
        body = answer.body if isinstance(answer.body, dict) else {}
        if (body.get("city"), body.get("location")) != (request.city, request.location):
            self._fail("echo", f"200 for {request.city}/{request.location} answered "
                       f"{body.get('city')}/{body.get('location')}", request)
        if request.key is None and body.get("requestId") != request.request_id:
            self._fail("echo", f"200 carries requestId {body.get('requestId')}", request)

    def _async_result(self, request: Request) -> None:
        final = request.final
        if final is None or final.status != 202:
            return
        result = request.result
        if not request.polls or result is None:
            self._fail("async result", "no poll answered", request)
            return
        if result.status == 404:
            self._lost(request, "async result not found")
            return
        if result.status not in ASYNC_FINAL:
            self._fail("async result", f"last poll: {result.status} {result.error or result.body}", request)
            return
        if result.status == 200:
            self._echoes(request, result)
        for reread in request.rereads:
            if reread.status == 404:
                self._lost(request, f"async result gone at {reread.sent:.1f} s, within its TTL")
            elif (reread.status, reread.body) != (result.status, result.body):
                self._fail("async result", f"read again at {reread.sent:.1f} s: {reread.status} {reread.body}, "
                           f"was {result.status}", request)

    def _lost(self, request: Request, what: str) -> None:
        """A write acknowledged and then gone: only a single Redis killed within its fsync
        interval explains it; with replicas confirming every write, nothing does."""
        accepted = request.attempts[-1].answered
        fault = None
        if self._topology == "standalone" and not self._replicas_confirm:
            fault = self._fault_between(("redis-kill",), accepted, accepted + FSYNC_LOSS_SECONDS)
        if fault is None:
            self._fail("lost", what, request)
        else:
            self.losses.append(Loss(f"request {request.number} ({request.request_id}): {what}", fault))

    # --- idempotency keys ---------------------------------------------------------------
    def _idempotency(self) -> None:
        by_key: dict[str, list[Request]] = defaultdict(list)
        for request in self._history:
            if request.key:
                by_key[request.key].append(request)
        executions: dict[str, list[Execution]] = defaultdict(list)
        for execution in self._executions:
            executions[execution.request_id].append(execution)
        for key, requests in by_key.items():
            answers = [(r, r.final) for r in requests if r.final is not None and r.final.status == 200]
            bodies = {_canonical(a.body) for _, a in answers}
            if len(bodies) > 1:
                self._fail("idempotency", f"key {key}: {len(bodies)} different results", answers[0][0])
            ids = {r.request_id for r in requests}
            for request, answer in answers:
                if isinstance(answer.body, dict) and answer.body.get("requestId") not in ids:
                    self._fail("idempotency", f"key {key}: answered for {answer.body.get('requestId')}", request)
            done = sorted((e for request_id in ids for e in executions.get(request_id, [])), key=lambda e: e.at)
            self._executed_once(key, requests[0], done)

    def _executed_once(self, key: str, first: Request, done: list[Execution]) -> None:
        entries = {e.entry_id for e in done}
        if len(entries) > 1:
            # A second entry means the key's record was gone when a repeat came.
            fault = None
            if self._topology == "standalone" and not self._replicas_confirm:
                fault = self._fault_between(("redis-kill",), done[0].at - 15, done[-1].at)
            if fault is None:
                self._fail("idempotency", f"key {key}: {len(entries)} entries worked on ({sorted(entries)})", first)
            else:
                self.losses.append(Loss(f"key {key}: its record, a repeat queued it again", fault))
        for entry in entries:
            runs = [e for e in done if e.entry_id == entry]
            for again in runs[1:]:
                fault = self._fault_between(EXECUTION_FAULTS, runs[0].at - self._claim_idle - 15, again.at)
                if fault is None:
                    self._fail("idempotency", f"key {key}: entry {entry} worked on {len(runs)} times, no fault "
                               f"explains it (last at {again.at:.1f} s by {again.worker})", first)
                else:
                    self.extra_executions.append((again, fault))

    # --- after the run ------------------------------------------------------------------
    def _after_run(self, after: AfterRun) -> None:
        for stream, pending in after.pending.items():
            if pending:
                self._fail("drained", f"{stream}: {pending} entries still pending")
        for stream, (left, _lag) in after.undelivered.items():
            if left:
                self._fail("drained", f"{stream}: {left} entries never delivered to a worker")
        for consumer, holding in after.consumers_holding.items():
            self._fail("consumers", f"{consumer} still holds {holding} entries")
        for stream, how in after.stream_overruns.items():
            self._fail("stream bounds", f"{stream}: {how}")
        if after.dead_letters:
            self._fail("dead letters", f"{after.dead_letters} entries dead-lettered (the soak sends no poison)")
        for process, (warm, end) in after.memory.items():
            if end > warm * MEMORY_GROWTH_LIMIT:
                self._fail("memory", f"{process}: {warm / 2**20:.1f} MiB after warm-up, {end / 2**20:.1f} MiB at the "
                           f"end ({end / warm:.2f}x)")
        for process, (warm, end) in after.series.items():
            # New label values come with new faults (a status, an error code, a shard's state),
            # so the count grows early; unbounded is what matters: per-request labels (below)
            # or a count far past what the labels' own values allow.
            if end > SERIES_LIMIT:
                self._fail("metric series", f"{process}: {warm} series after warm-up, {end} at the end")
        for request in after.afterwards:
            final = request.final
            if final is None or final.status != 200:
                self._fail("served after the faults", f"{_answer_text(final)} once every fault was over", request)
        for complaint in after.redis_complaints:
            self._fail("redis", complaint)
        for series in after.id_labels:
            self._fail("metric series", f"a label carries a request's id or key: {series}")


def _answer_text(attempt: Attempt | None) -> str:
    if attempt is None or attempt.status is None:
        return f"no answer ({attempt.error if attempt else 'never sent'})"
    error = attempt.body.get("error") if isinstance(attempt.body, dict) else None
    return f"{attempt.status} {error or ''}".strip()


def _canonical(body: Any) -> str:
    import json

    return json.dumps(body, sort_keys=True)
