"""``python -m soak``: start the system, drive the mix, do the faults of the seed's schedule,
then check the whole history. The last line is exactly
``soak: <R> requests, <F> faults (<K> kinds), <V> violations``; exit 0 only with none."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from app.shared import contract
from soak import schedule
from soak.checker import AfterRun, Checker, Verdict, Violation
from soak.faults import Happened, Injector
from soak.system import TOPOLOGIES, System, Timings, rss_bytes
from soak.traffic import Attempt, Request, Traffic
from tests.support.processes import wait_until

# Processes are measured from this long after they started (imports done, pools filled).
MEMORY_WARM_UP_SECONDS = 10.0
DRAIN_SECONDS = 60.0
# Requests of each kind (keyed, plain) asked one by one after the run: 30 keys reach all 6 shards.
AFTERWARDS_COUNT = 30
# Approximate trimming (XADD MINID ~) removes whole nodes of the stream: up to one node's
# entries (stream-node-max-entries, 100) may stay older than the window.
TRIM_SLACK_ENTRIES = 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED") or time.time_ns() % 1_000_000))
    parser.add_argument("--topology", choices=TOPOLOGIES, default=os.environ.get("SOAK_TOPOLOGY", "cluster"))
    parser.add_argument("--rate", type=float, default=float(os.environ.get("SOAK_RATE", 12)),
                        help="requests per second, open loop")
    parser.add_argument("--workdir", type=Path, help="where the processes' files and logs go (kept)")
    args = parser.parse_args(argv)
    # Stopped (a CI timeout, kill): the processes and network namespaces are still cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.seconds < schedule.WARM_UP_SECONDS + schedule.QUIET_TAIL_SECONDS + 10:
        parser.error(f"--seconds must be at least {schedule.WARM_UP_SECONDS + schedule.QUIET_TAIL_SECONDS + 10:g}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    violations = -1
    try:
        violations, faults, requests = soak(args.seconds, args.seed, args.topology, args.rate, workdir)
    finally:
        # Kept when something is wrong: the logs, and the history to read it from.
        if args.workdir is None and violations == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"soak: logs and history.jsonl kept in {workdir}")
    print(f"soak: {requests} requests, {len(faults)} faults ({len({f.kind for f in faults})} kinds), "
          f"{violations} violations")
    return 0 if violations == 0 else 1


def soak(seconds: float, seed: int, topology: str, rate: float, workdir: Path) -> tuple[int, list[Happened], int]:
    timings = Timings()
    faults = schedule.draw(seed, seconds, timings.claim_idle_seconds)
    print(f"soak: seed {seed}, {seconds:g} s, {topology}, {rate:g} req/s, {len(faults)} faults scheduled; "
          f"files in {workdir}", flush=True)
    system = System(workdir, topology, timings)
    traffic: Traffic | None = None
    injector: Injector | None = None
    try:
        started = time.time()

        def clock() -> float:
            return time.time() - started

        traffic = Traffic(system.proxy_urls, rate, seed, deadline_seconds=timings.request_timeout_seconds,
                          async_deadline_seconds=timings.async_deadline_seconds, clock=clock).start()
        injector = Injector(system, faults, clock, say=lambda line: print(line, flush=True)).start()
        sampler = Sampler(system, clock).start()
        time.sleep(max(0.0, seconds - clock()))
        happened = injector.join()
        stopped_at = clock()
        history = traffic.stop()
        print(f"soak: load stopped at {stopped_at:.1f} s; every caller answered at {clock():.1f} s", flush=True)
        _read_results_again(traffic, history, clock, timings.result_ttl_seconds)
        after = _after_run(system, sampler, timings, traffic)
        verdict = Checker(history, happened, system.executions(started), topology=topology,
                          replicas_confirm=topology != "standalone",
                          claim_idle_seconds=timings.claim_idle_seconds).check(after)
        verdict.violations.extend(Violation("fault", f"{f.kind} {f.target}: {f.error}") for f in happened if f.error)
        _report(history, happened, verdict, after)
        _save(workdir, history, happened)
        return len(verdict.violations), happened, len(history)
    finally:
        # Stopped midway (SIGTERM): nothing may touch the processes while they are stopped.
        for part in (injector, traffic):
            if part is not None:
                part.abandon()
        system.stop()


class Sampler:
    """Each service process's memory every 2 s, and its metric series after warm-up."""

    def __init__(self, system: System, clock) -> None:  # type: ignore[no-untyped-def]
        self._system = system
        self._now = clock
        self.first_seen: dict[str, float] = {}
        # Every sample after warm-up (the first is the size to grow from), to tell growth that
        # levels off from growth that goes on.
        self.sizes: dict[str, list[tuple[float, int]]] = {}
        self.series_warm: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            now = self._now()
            for key, pid in self._system.service_processes().items():
                size = rss_bytes(pid)
                if size is None:
                    continue
                self.first_seen.setdefault(key, now)
                if key in self.sizes or now - self.first_seen[key] >= MEMORY_WARM_UP_SECONDS:
                    self.sizes.setdefault(key, []).append((now, size))
            if not self.series_warm and now >= schedule.WARM_UP_SECONDS:
                self.series_warm = {name: len(lines) for name, lines in self._system.metric_series().items()}

    def alive(self) -> set[str]:
        return set(self._system.service_processes())

    def midway(self, key: str) -> int:
        """The process's size halfway between its warm-up and its last sample."""
        samples = self.sizes[key]
        middle = (samples[0][0] + samples[-1][0]) / 2
        return next(size for at, size in samples if at >= middle)


def _read_results_again(traffic: Traffic, history: list[Request], clock, ttl: float) -> None:  # type: ignore[no-untyped-def]
    """Every async result still within its TTL is read once more after the run."""
    for request in history:
        result = request.result
        if request.async_id and request.polls and result and result.status in (200, 504) \
                and clock() - result.answered < ttl - 10:
            request.rereads.append(traffic.read_result(request))


def _after_run(system: System, sampler: Sampler, timings: Timings, traffic: Traffic) -> AfterRun:
    after = AfterRun()
    client = system.client()
    streams = system.request_streams()
    group = contract.DEFAULT_CONSUMER_GROUP

    def pending() -> dict[str, int]:
        counts = {}
        for stream in streams:
            try:
                counts[stream] = int(client.xpending(stream, group)["pending"])
            except Exception as error:  # a stream never written has no group
                if "NOGROUP" not in str(error):
                    raise
        return counts

    try:
        wait_until(lambda: not any(pending().values()), DRAIN_SECONDS, interval=0.5, what="the streams drained")
    except TimeoutError:
        pass
    after.pending = pending()
    after.afterwards = traffic.after_the_faults(AFTERWARDS_COUNT)
    now_ms = contract.now_ms()
    window_ms = int(timings.trim_window_seconds * 1000) + 5_000
    for stream in streams:
        if not client.exists(stream):
            continue
        info = next(g for g in client.xinfo_groups(stream) if g["name"].decode() == group)
        after_last = client.xrange(stream, "(" + info["last-delivered-id"].decode(), "+") or []
        after.undelivered[stream] = (len(after_last), None if info.get("lag") is None else int(info["lag"]))
        for consumer in client.xinfo_consumers(stream, group):
            if consumer["pending"]:
                after.consumers_holding[f"{stream}/{consumer['name'].decode()}"] = consumer["pending"]
        stale = client.xrange(stream, "-", f"{now_ms - window_ms}", count=TRIM_SLACK_ENTRIES + 1) or []
        if len(stale) > TRIM_SLACK_ENTRIES:
            after.stream_overruns[stream] = (f"more than {TRIM_SLACK_ENTRIES} entries older than the trim window "
                                             f"({window_ms / 1000:g} s)")
        after.dead_letters += client.xlen(contract.dead_letter_stream(stream)) if \
            contract.dead_letter_stream(stream) != stream else 0
    for reply_stream in client.scan_iter(match=contract.REPLY_STREAM_PREFIX + "*", _type="stream"):
        length = client.xlen(reply_stream)
        if length > contract.REPLY_STREAM_MAXLEN + TRIM_SLACK_ENTRIES:
            after.stream_overruns[reply_stream.decode()] = f"{length} entries"
    client.close()
    after.redis_complaints = system.redis_complaints()
    sampler.stop()
    alive = sampler.alive()
    after.memory = {name: (samples[0][1], samples[-1][1]) for name, samples in sampler.sizes.items() if name in alive}
    after.memory_midway = {name: sampler.midway(name) for name in after.memory}
    series_end = system.metric_series()
    after.series = {name: (sampler.series_warm[name], len(lines)) for name, lines in series_end.items()
                    if name in sampler.series_warm}
    after.id_labels = [line for lines in series_end.values() for line in lines if "soak-" in line or "key-" in line]
    return after


def _save(workdir: Path, history: list[Request], happened: list[Happened]) -> None:
    """Every request with its answers, then every fault, one JSON object per line."""
    with (workdir / "history.jsonl").open("w") as file:
        for request in history:
            file.write(json.dumps({"request": dataclasses.asdict(request)}) + "\n")
        for fault in happened:
            file.write(json.dumps({"fault": dataclasses.asdict(fault)}) + "\n")


def _report(history: list[Request], happened: list[Happened], verdict: Verdict, after: AfterRun) -> None:
    by_kind: dict[str, Counter[str]] = {}
    for request in history:
        final = request.result if request.kind == "async" and request.polls else request.final
        by_kind.setdefault(request.kind, Counter())[_answer(final)] += 1
    for kind, counts in sorted(by_kind.items()):
        print(f"soak: {kind}: {sum(counts.values())} requests, answers {dict(sorted(counts.items()))}")
    behind = {stream: lag for stream, (left, lag) in after.undelivered.items() if lag is not None and lag != left}
    if behind:
        print(f"soak: Redis's consumer-group lag is not the backlog on {len(behind)} streams ({behind}; nothing "
              f"undelivered): its read counter fell behind; admission reads the newest entry too")
    retried = sum(len(r.attempts) > 1 for r in history)
    print(f"soak: {retried} requests retried after a broken connection")
    print(f"soak: {len(verdict.extra_executions)} executions repeated, each during a fault: "
          f"{dict(Counter(fault.kind for _, fault in verdict.extra_executions))}")
    for loss in verdict.losses:
        print(f"soak: loss the topology allows: {loss.what} (fault: {loss.fault.at:.1f} {loss.fault.kind} "
              f"{loss.fault.target})")
    grown = max(((end / warm, name) for name, (warm, end) in after.memory.items()), default=(0.0, "-"))
    print(f"soak: memory of {len(after.memory)} service processes: largest growth {grown[0]:.2f}x ({grown[1]})")
    # Flat or still growing: each process's second half of life against its first.
    late = max(((end / after.memory_midway[name], name) for name, (_, end) in after.memory.items()), default=(0.0, "-"))
    print(f"soak: memory growth in the second half of each process's life: largest {late[0]:.2f}x ({late[1]}); "
          + ", ".join(f"{name} {warm / 2**20:.0f}/{after.memory_midway[name] / 2**20:.0f}/{end / 2**20:.0f} MiB"
                      for name, (warm, end) in sorted(after.memory.items())) + " (warm/midway/end)")
    series = sum(end for _, end in after.series.values())
    print(f"soak: metric series {sum(w for w, _ in after.series.values())} after warm-up, {series} at the end")
    for violation in verdict.violations:
        print(f"VIOLATION {violation.rule}: {violation.detail}")
        if violation.request is not None:
            _print_history(violation.request, happened)


def _answer(attempt: Attempt | None) -> str:
    """200, or the status with the problem's error code (503 replicas_unavailable)."""
    if attempt is None or attempt.status is None:
        return "none"
    error = attempt.body.get("error") if isinstance(attempt.body, dict) and attempt.status != 200 else None
    return f"{attempt.status} {error}" if error else str(attempt.status)


def _print_history(request: Request, happened: list[Happened]) -> None:
    print(f"  request {request.number} {request.kind} id={request.request_id} key={request.key} "
          f"{request.city}/{request.location} async_id={request.async_id}")
    for attempt in [*request.attempts, *request.polls, *request.rereads]:
        print(f"    {attempt.sent:8.2f} -> {attempt.answered:8.2f} {attempt.status} {attempt.error or attempt.body}")
    start = request.attempts[0].sent if request.attempts else 0.0
    for fault in happened:
        if start - 30 <= fault.at <= start + 30:
            print(f"    fault {fault.at:.1f}-{fault.ended} {fault.kind} {fault.target}")
