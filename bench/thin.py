"""Row 1's CPU per answered request against its floors, zero work, open loop at fixed rates
(most deployments live far below saturation, where each small batch pays the whole fixed
cost) and closed loop at saturation:

- the proxy (every gunicorn process) against a bare Flask echo of the same route under the
  same gunicorn + gevent configuration (bench/echo_app.py);
- the proxy also against bench/minimal_proxy.py: the echo plus the least a proxy over a
  stream must do (an XADD, a blocking XREAD loop), answered by the minimal worker; this
  minimal pair is also the floor of Redis's CPU per request;
- the worker (the whole process: leases, claims, housekeeping, metrics included) against
  bench/minimal_worker.py behind the same proxy, fed the same requests, and against the
  same minimal worker under gevent's monkey-patching (our worker's runtime: terminals are
  greenlets), which shows what the runtime itself costs per request;
- Redis's own CPU per request (INFO cpu), and the p99 at 100 and 300 req/s.

Each setup has its own Redis and all run side by side, measured in turn, ROUNDS times:
every figure is the median of the rounds. With ``before`` an earlier commit's proxy and
worker are measured the same way in the same run.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.costs import RedisCost, RedisUsage, child_pids, process_cpu_seconds
from bench.overload import checkout
from tests.support.processes import BIN, ROOT, Managed, Proxy, RedisServer, Worker, base_env, free_port, wait_until
from tools.load_runs import LoadResult, check_ready, run_load, run_open_loop

RATE = 300
LOW_RATE = 100
ROUNDS = 3
WARMUP_SECONDS = 2.0


class Setup:
    """One system under load: its URL, its processes by role, and the Redis it uses."""

    def __init__(self, name: str, url: str, roles: dict[str, list[int]], redis: RedisServer | None) -> None:
        self.name = name
        self.url = url
        self.roles = roles
        self.redis = redis

    def measure(self, seconds: float, rate: float | None, clients: int) -> dict[str, Any]:
        """Open loop at ``rate``, or closed loop with ``clients`` when None, after a warm-up."""
        def drive(duration: float) -> LoadResult:
            if rate is None:
                return asyncio.run(run_load(self.url, count=None, concurrency=clients, timeout=30, duration=duration))
            return asyncio.run(run_open_loop(self.url, rate=rate, count=None, timeout=30, duration=duration))

        drive(WARMUP_SECONDS)
        cpu_before = {role: sum(map(process_cpu_seconds, pids)) for role, pids in self.roles.items()}
        redis_before = RedisUsage.read(self.redis.client()) if self.redis else None
        result = drive(seconds)
        answered = max(1, len(result.ok))
        figures: dict[str, Any] = {
            f"{role}_us": round((sum(map(process_cpu_seconds, pids)) - cpu_before[role]) * 1e6 / answered, 1)
            for role, pids in self.roles.items()}
        if self.redis and redis_before:
            cost = RedisCost.between(redis_before, RedisUsage.read(self.redis.client()), len(result.ok))
            figures["redis_us"] = round(cost.cpu_us_per_request, 1)
            figures["redis_commands"] = round(cost.commands_per_request, 2)
        summary = result.summary()
        figures.update(ok=summary["ok"], failed=summary["failed"], refused=summary["refused"],
                       requests_per_second=summary["requests_per_second"], p99_ms=summary["p99_ms"])
        return figures


@contextmanager
def _echo(workdir: Path) -> Iterator[Setup]:
    port = free_port()
    echo = Managed("echo", [str(BIN / "gunicorn"), "-c", "app/proxy/gunicorn.conf.py", "bench.echo_app:app"],
                   base_env(PORT=str(port), METRICS_PORT=str(free_port()), WEB_CONCURRENCY="2", REDIS_URL="redis://127.0.0.1:1/0",
                            PROMETHEUS_MULTIPROC_DIR=tempfile.mkdtemp(dir=workdir)),
                   workdir / "echo.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: asyncio.run(check_ready(url)) is None, 30, what="echo ready")
        yield Setup("echo", url, {"proxy": child_pids(echo.pid)}, None)
    finally:
        echo.stop()


# The minimal worker, run as our worker runs: every blocking call a gevent hub turn.
_ON_GEVENT = ("from gevent import monkey; monkey.patch_all(); import runpy, sys; "
              "runpy.run_module('bench.minimal_worker', run_name='__main__')")


@contextmanager
def _system(workdir: Path, name: str, code: Path, worker_kind: str, terminals: int,
            minimal_proxy: bool = False) -> Iterator[Setup]:
    """A Redis of its own, one proxy (2 processes: ours from ``code``, or the minimal one) and
    one worker: ``worker_kind`` ours, minimal, or minimal-gevent."""
    redis = RedisServer(workdir / f"redis-{name}")
    # The minimal worker publishes no drain: admission would hold its backlog to the cold limit.
    admission = {"ADMISSION_ENABLED": "false"} if worker_kind != "ours" else {}
    proxy = Proxy(workdir, redis.url, code, "bench.minimal_proxy:app" if minimal_proxy else None,
                  REQUEST_TIMEOUT_SECONDS="30", LOG_LEVEL="WARNING", **admission)
    if worker_kind != "ours":
        runner = ["-c", _ON_GEVENT] if worker_kind == "minimal-gevent" else ["-m", "bench.minimal_worker"]
        worker: Managed = Managed(f"{worker_kind}-{name}", [sys.executable, *runner, redis.url,
                                                            "weather-requests", "weather-workers"],
                                  base_env(), workdir / f"worker-{name}.log")
    else:
        worker = Worker(workdir, redis.url, name, code, PROCESSING_DELAY_MS="0", WORKER_TERMINALS=str(terminals),
                        LOG_LEVEL="WARNING")
    try:
        proxy.wait_ready()
        if isinstance(worker, Worker):
            worker.wait_ready()
        yield Setup(name, proxy.url, {"proxy": child_pids(proxy.pid), "worker": [worker.pid]}, redis)
    finally:
        proxy.stop()
        worker.stop()
        redis.stop()


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def scenario_thin(workdir: Path, seconds: float, clients: int, before: str | None = None,
                  terminals: int = 50) -> dict[str, Any]:
    with ExitStack() as stack:
        setups = [stack.enter_context(_echo(workdir)),
                  stack.enter_context(_system(workdir, "ours", ROOT, "ours", terminals)),
                  stack.enter_context(_system(workdir, "minimal", ROOT, "minimal", terminals)),
                  stack.enter_context(_system(workdir, "minimal-gevent", ROOT, "minimal-gevent", terminals)),
                  stack.enter_context(_system(workdir, "minimal-pair", ROOT, "minimal", terminals,
                                              minimal_proxy=True))]
        if before:
            code = stack.enter_context(checkout(before))
            setups.append(stack.enter_context(_system(workdir, "before", code, "ours", terminals)))
        loads: dict[str, float | None] = {f"{RATE}/s": RATE, "saturation": None}
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for _ in range(ROUNDS):
            for setup in setups:
                for label, rate in loads.items():
                    runs.setdefault(setup.name, {}).setdefault(label, []).append(
                        setup.measure(seconds, rate, clients))
                if setup.name in ("ours", "before"):
                    runs[setup.name].setdefault(f"{LOW_RATE}/s", []).append(setup.measure(seconds, LOW_RATE, clients))
    medians = {name: {label: _median(rounds) for label, rounds in by_load.items()} for name, by_load in runs.items()}
    ratios: dict[str, Any] = {}
    for label in loads:
        ours, echo, pair = medians["ours"][label], medians["echo"][label], medians["minimal-pair"][label]
        ratios[label] = {"proxy_vs_echo": round(ours["proxy_us"] / echo["proxy_us"], 2),
                         "proxy_vs_minimal_proxy": round(ours["proxy_us"] / pair["proxy_us"], 2),
                         "worker_vs_minimal": round(ours["worker_us"] / medians["minimal"][label]["worker_us"], 2),
                         "worker_vs_minimal_gevent": round(
                             ours["worker_us"] / medians["minimal-gevent"][label]["worker_us"], 2),
                         "redis_vs_minimal_pair": round(ours["redis_us"] / pair["redis_us"], 2)}
        if before:
            old = medians["before"][label]
            ratios[label]["before_proxy_vs_echo"] = round(old["proxy_us"] / echo["proxy_us"], 2)
            ratios[label]["before_worker_vs_minimal"] = round(old["worker_us"] / medians["minimal"][label]["worker_us"],
                                                              2)
    return {"rate": RATE, "low_rate": LOW_RATE, "rounds": ROUNDS, "seconds": seconds, "clients": clients,
            "terminals": terminals, "before": before, "medians": medians, "ratios": ratios, "runs": runs}


def thin_rows(table: Any, thin: dict[str, Any], verdict: Any) -> None:
    medians, ratios, rate = thin["medians"], thin["ratios"], thin["rate"]
    for label, target in ((f"{rate}/s", 2.0), ("saturation", None)):
        ours, echo, minimal = medians["ours"][label], medians["echo"][label], medians["minimal"][label]
        ratio = ratios[label]
        where = f"open loop {label}" if label != "saturation" else f"saturation ({thin['clients']} clients)"
        before = ""
        if thin["before"]:
            old = medians["before"][label]
            before = (f"; before ({thin['before']}): proxy {old['proxy_us']:.0f} us = "
                      f"{ratio['before_proxy_vs_echo']:.2f}x"
                      f", worker {old['worker_us']:.0f} us = {ratio['before_worker_vs_minimal']:.2f}x, "
                      f"Redis {old['redis_us']:.0f} us")
        table.add_row(f"1. {where}, CPU per answered request: proxy vs bare echo, worker vs minimal worker",
                      f"proxy {ours['proxy_us']:.0f} vs {echo['proxy_us']:.0f} us = {ratio['proxy_vs_echo']:.2f}x; "
                      f"worker {ours['worker_us']:.0f} vs {minimal['worker_us']:.0f} us = "
                      f"{ratio['worker_vs_minimal']:.2f}x; Redis {ours['redis_us']:.0f} us "
                      f"({ours['redis_commands']:.2f} commands){before}",
                      "<= 2.0x, <= 2.0x, Redis <= 100 us" if target else "-",
                      verdict(ratio["proxy_vs_echo"] <= 2.0 and ratio["worker_vs_minimal"] <= 2.0
                              and ours["redis_us"] <= 100) if target else "-")
        pair, on_gevent = medians["minimal-pair"][label], medians["minimal-gevent"][label]
        table.add_row(f"1. {where}, the same against floors that talk to Redis: minimal proxy (echo + XADD + "
                      "XREAD), minimal worker under gevent, Redis of the minimal pair",
                      f"proxy {ratio['proxy_vs_minimal_proxy']:.2f}x ({pair['proxy_us']:.0f} us); "
                      f"worker {ratio['worker_vs_minimal_gevent']:.2f}x ({on_gevent['worker_us']:.0f} us); "
                      f"Redis {ratio['redis_vs_minimal_pair']:.2f}x ({pair['redis_us']:.0f} us)", "-", "-")
    for label in (f"{thin['low_rate']}/s", f"{rate}/s"):
        ours = medians["ours"][label]
        before = (f" (before: {medians['before'][label]['p99_ms']:.1f} ms)" if thin["before"] else "")
        table.add_row(f"1. open loop {label}, zero work: p99 (median of {thin['rounds']})",
                      f"{ours['p99_ms']:.1f} ms{before}", "-", "-")


if __name__ == "__main__":  # pragma: no cover - a quick look without the table
    import json

    with tempfile.TemporaryDirectory(prefix="bench-thin-") as tmp:
        print(json.dumps(scenario_thin(Path(tmp), float(sys.argv[1]) if len(sys.argv) > 1 else 10, 64,
                                       sys.argv[2] if len(sys.argv) > 2 else None)["medians"], indent=1))
