"""`make bench`: starts Redis, workers, the proxy and the peers itself, drives load and
prints one table, every figure measured in this run. Results go to bench/results/.

0. Redis's own work per answered request on the zero-work path, from INFO cpu and
   commandstats before and after the measured load (not the warm-up): target <= 35 us
   and <= 3.5 commands; the projected ceiling of one Redis core follows from it.
1. zero work: end to end through the stream vs a bare Flask echo on the same gunicorn
   configuration (the HTTP tier's ceiling), closed loop. Target >= 0.5x. Then CPU per
   answered request against the floors (bench/thin.py): the proxy vs the echo and the
   worker vs a minimal redis-py worker, open loop at 300 req/s (targets <= 2.0x each,
   Redis <= 100 us) and at saturation, and against floors that do the job on the same
   runtime (a minimal proxy with one XADD and an XREAD loop, the minimal worker under
   gevent, the minimal pair's Redis), and the p99 at 100 and 300 req/s; medians of 3
   rounds. `--only thin [--before REV]` runs it alone, REV's code measured beside.
2. 150 terminals x 150 ms (ideal 1,000 req/s), OPEN loop (fixed arrival rate, latency
   from each request's scheduled start): at 80% of ideal p99 - 150 ms <= 20 ms; at 1.5x
   and 3x of ideal the 200s per second (goodput) as a share of ideal, target >= 95%
   at 1.5x (saturation), with the surplus refused fast (503) and no 504 storm.
3. peer: Celery (Redis broker and result backend), apply_async + get at the same
   concurrency as 1. Target >= 5x Celery's req/s.
4. durability: zero work with REDIS_WAIT_REPLICAS=1 (each enqueue pipeline and each
   batch of replies confirmed by a local replica) vs 0, against the same primary and replica.
5. scale-out: zero work, standalone Redis vs a cluster of 3 primaries (6 shards). Redis
   CPU (INFO used_cpu_user + sys) of the busiest server over the same measured stretch:
   at the same open-loop rate (900 req/s) with 2 and 8 proxy processes, target busiest
   <= 0.45x standalone and <= 1.15x the primaries' mean; at the same load per server
   (cluster at 900, standalone at 300 req/s) <= 1.0x; closed loop at saturation (50
   clients) cluster req/s >= 0.85x standalone.
6. async request-reply and Idempotency-Key: zero work, the same proxy and worker, closed loop
   at the concurrency of 1: plain calls, async submit + poll (every 50 ms), an
   Idempotency-Key on each call, then plain calls again; req/s, Redis CPU and commands per
   answered request, as ratios to the plain calls. `--only async` runs this one alone.
7. overload (bench/overload.py): one worker at about 16.7 req/s offered 0.7x, a burst, 2.4x and
   5x, urgent requests within an overload, recovery, and admission's CPU cost. `--only overload`
   runs it alone; `--only overload --sweep [--before REV]` draws goodput against offered load
   (docs/overload.png), for REV's code too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import overload as overload_bench
from bench import thin as thin_bench
from bench.costs import RedisCost, RedisUsage, child_pids, process_cpu_seconds
from tests.support.cluster import RedisClusterSet
from tests.support.processes import (
    BIN,
    ROOT,
    Managed,
    Proxy,
    RedisServer,
    Worker,
    base_env,
    free_port,
    queues_of,
    wait_until,
)
from tools.load_runs import LoadResult, check_ready, run_load, run_open_loop

RESULTS = ROOT / "bench" / "results"
# Wide enough for the table when the output goes to a file or a pipe.
console = Console(width=None if sys.stdout.isatty() else 200)


def load(url: str, concurrency: int, seconds: float, warmup: float = 2.0) -> LoadResult:
    asyncio.run(run_load(url, count=None, concurrency=concurrency, timeout=30, duration=warmup))
    return asyncio.run(run_load(url, count=None, concurrency=concurrency, timeout=30, duration=seconds))


def costed_load(redis: RedisServer, url: str, concurrency: int, seconds: float,
                processes: dict[str, list[int]], **options: Any) -> tuple[LoadResult, RedisCost, dict[str, float]]:
    """Load after a warm-up, with what Redis and each group of processes spent on it
    (``options`` go to run_load: asynchronous, key_prefix)."""
    warm = {**options, **({"key_prefix": options["key_prefix"] + "-warm"} if options.get("key_prefix") else {})}
    asyncio.run(run_load(url, count=None, concurrency=concurrency, timeout=30, duration=2.0, **warm))
    client = redis.client()
    before = RedisUsage.read(client)
    cpu_before = {name: sum(map(process_cpu_seconds, pids)) for name, pids in processes.items()}
    result = asyncio.run(run_load(url, count=None, concurrency=concurrency, timeout=30, duration=seconds, **options))
    cpu_ms = {f"{name}_cpu_ms_per_request": round((sum(map(process_cpu_seconds, pids)) - cpu_before[name])
                                                  * 1000 / max(1, len(result.ok)), 4)
              for name, pids in processes.items()}
    return result, RedisCost.between(before, RedisUsage.read(client), len(result.ok)), cpu_ms


def ready(url: str) -> None:
    wait_until(lambda: asyncio.run(check_ready(url)) is None, 30, what=f"{url} ready")


def serve(name: str, argv: list[str], workdir: Path, **env: str) -> Managed:
    return Managed(name, argv, base_env(**env), workdir / f"{name}.log")


def scenario_overhead(workdir: Path, redis: RedisServer, concurrency: int, seconds: float) -> dict:
    port = free_port()
    echo = serve("echo", [str(BIN / "gunicorn"), "-c", "app/proxy/gunicorn.conf.py", "bench.echo_app:app"], workdir,
                 PORT=str(port), WEB_CONCURRENCY="2", REDIS_URL=redis.url,
                 PROMETHEUS_MULTIPROC_DIR=tempfile.mkdtemp(dir=workdir))
    trivial_port = free_port()
    trivial = serve("trivial", [sys.executable, "-m", "bench.trivial_server", str(trivial_port)], workdir)
    try:
        wait_until(lambda: socket.create_connection(("127.0.0.1", trivial_port), timeout=1).close() or True, 10,
                   what="trivial server")
        ceiling = load(f"http://127.0.0.1:{trivial_port}", concurrency, seconds)
        ready(f"http://127.0.0.1:{port}")
        bare = load(f"http://127.0.0.1:{port}", concurrency, seconds)
    finally:
        echo.stop()
        trivial.stop()
    end_to_end, cost, process_cpu = zero_work(workdir, redis, concurrency, seconds)
    return {"loadgen_ceiling": ceiling.summary(), "echo": bare.summary(), "end_to_end": end_to_end.summary(),
            "ratio": round(end_to_end.requests_per_second / bare.requests_per_second, 3),
            "redis_cost": cost.summary(), "process_cpu": process_cpu}


def drained(redis: RedisServer) -> bool:
    client = redis.client()
    return all(not group["lag"] and not group["pending"]
               for queue in queues_of() if client.exists(queue) for group in client.xinfo_groups(queue))


def scenario_open_loop(workdir: Path, redis: RedisServer, seconds: float) -> dict:
    """150 terminals x 150 ms at fixed arrival rates: 80% of ideal, then 1.5x and 3x overload."""
    terminals, work_ms = 150, 150
    ideal = terminals / (work_ms / 1000)
    proxy = Proxy(workdir, redis.url, REQUEST_TIMEOUT_SECONDS="30", LOG_LEVEL="WARNING")
    worker = Worker(workdir, redis.url, "open-loop", PROCESSING_DELAY_MS=str(work_ms),
                    WORKER_TERMINALS=str(terminals), LOG_LEVEL="WARNING")
    runs = {}
    try:
        proxy.wait_ready()
        worker.wait_ready()
        asyncio.run(run_open_loop(proxy.url, rate=0.5 * ideal, count=None, timeout=60, duration=2))
        for share in (0.8, 1.5, 3.0):
            result = asyncio.run(run_open_loop(proxy.url, rate=share * ideal, count=None, timeout=60,
                                               duration=seconds))
            refused = [s for s in result.samples if s.status == 503]
            summary = result.summary()
            summary.update({
                "offered_share": share, "goodput_share": round(result.ok_per_second / ideal, 3),
                "p99_overhead_ms": round(summary["p99_ms"] - work_ms, 2),
                "refused_503": len(refused), "timed_out_504": sum(s.status == 504 for s in result.samples),
                "other_failures": sum(s.status not in (200, 503, 504) for s in result.samples),
                "refused_p99_ms": round(sorted(s.seconds for s in refused)[int(0.99 * (len(refused) - 1))] * 1000, 2)
                if refused else None,
            })
            runs[f"{share:g}x"] = summary
            # Let the queue of an overload run drain before the next one starts.
            wait_until(lambda: drained(redis), 120, interval=0.5, what="queue drained")
    finally:
        proxy.stop()
        worker.stop()
    return {"terminals": terminals, "work_ms": work_ms, "ideal_rps": ideal, "runs": runs}


@contextmanager
def zero_work_services(workdir: Path, redis_url: str, concurrency: int, **env: str) -> Iterator[tuple[Proxy, Worker]]:
    """One proxy and one worker with no work per entry, ready; stopped afterwards."""
    proxy = Proxy(workdir, redis_url, REQUEST_TIMEOUT_SECONDS="30", LOG_LEVEL="WARNING", **env)
    worker = Worker(workdir, redis_url, f"zero-{free_port()}", PROCESSING_DELAY_MS="0",
                    WORKER_TERMINALS=str(concurrency), LOG_LEVEL="WARNING", **env)
    try:
        proxy.wait_ready()
        worker.wait_ready()
        yield proxy, worker
    finally:
        proxy.stop()
        worker.stop()


def zero_work(workdir: Path, redis: RedisServer, concurrency: int, seconds: float,
              **env: str) -> tuple[LoadResult, RedisCost, dict[str, float]]:
    with zero_work_services(workdir, redis.url, concurrency, **env) as (proxy, worker):
        return costed_load(redis, proxy.url, concurrency, seconds,
                           {"proxy": child_pids(proxy.pid), "worker": [worker.pid]})


SAME_RATE = 900
PER_SERVER_RATE = SAME_RATE // 3
SATURATION_CLIENTS = 50


def open_loop_redis_cost(nodes: list[RedisServer], url: str, rate: float, seconds: float) -> dict:
    """Open loop at ``rate`` after a warm-up: what each Redis server spent, per answered request."""
    asyncio.run(run_open_loop(url, rate=rate, count=None, timeout=30, duration=2))
    before = [RedisUsage.read(node.client()) for node in nodes]
    result = asyncio.run(run_open_loop(url, rate=rate, count=None, timeout=30, duration=seconds))
    costs = [RedisCost.between(b, RedisUsage.read(node.client()), len(result.ok)).summary()
             for b, node in zip(before, nodes, strict=True)]
    cpu = [cost["cpu_seconds"] for cost in costs]
    return {"rate": rate, "load": result.summary(), "per_server": costs, "cpu_seconds": cpu,
            "busiest_cpu_seconds": max(cpu), "mean_cpu_seconds": round(sum(cpu) / len(cpu), 4)}


def scenario_cluster(workdir: Path, concurrency: int, seconds: float) -> dict:
    """Standalone Redis vs a three-primary cluster (6 shards), zero work: Redis CPU of the
    busiest server at the same open-loop rate (2 and 8 proxy processes) and at the same load
    per server (the cluster at 3x the rate), and the closed-loop req/s at saturation."""
    runs: dict[str, dict] = {}
    standalone = RedisServer(workdir / "standalone")
    try:
        for processes in (2, 8):
            with zero_work_services(workdir, standalone.url, concurrency, WEB_CONCURRENCY=str(processes)) as (p, _):
                runs[f"standalone_{processes}p_{SAME_RATE}"] = open_loop_redis_cost([standalone], p.url, SAME_RATE,
                                                                                    seconds)
                if processes == 2:
                    runs[f"standalone_2p_{PER_SERVER_RATE}"] = open_loop_redis_cost([standalone], p.url,
                                                                                    PER_SERVER_RATE, seconds)
            standalone.client().flushall()
    finally:
        standalone.stop()
    cluster = RedisClusterSet(workdir / "cluster", primaries=3)
    try:
        for processes in (2, 8):
            with zero_work_services(workdir, cluster.url, concurrency, REDIS_CLUSTER="true", REQUEST_STREAM_SHARDS="6",
                                    WEB_CONCURRENCY=str(processes)) as (p, _):
                runs[f"cluster_{processes}p_{SAME_RATE}"] = open_loop_redis_cost(cluster.nodes, p.url, SAME_RATE,
                                                                                 seconds)
    finally:
        cluster.stop()
    runs.update(saturation_rounds(workdir, concurrency, seconds))
    ratios = {}
    for processes in (2, 8):
        one, three = runs[f"standalone_{processes}p_{SAME_RATE}"], runs[f"cluster_{processes}p_{SAME_RATE}"]
        ratios[f"{processes}p_busiest_vs_standalone"] = round(three["busiest_cpu_seconds"]
                                                              / one["busiest_cpu_seconds"], 3)
        ratios[f"{processes}p_busiest_vs_mean"] = round(three["busiest_cpu_seconds"] / three["mean_cpu_seconds"], 3)
    ratios["per_server_busiest_vs_standalone"] = round(
        runs[f"cluster_2p_{SAME_RATE}"]["busiest_cpu_seconds"]
        / runs[f"standalone_2p_{PER_SERVER_RATE}"]["busiest_cpu_seconds"], 3)
    ratios["saturation_rps"] = round(runs["cluster_saturation"]["requests_per_second"]
                                     / runs["standalone_saturation"]["requests_per_second"], 3)
    return {"runs": runs, "ratios": ratios}


SATURATION_ROUNDS = 3


def saturation_rounds(workdir: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    """Closed loop at saturation, standalone and cluster side by side and measured in turn,
    SATURATION_ROUNDS times: the medians (req/s moves with the noise of shared cores)."""
    standalone = RedisServer(workdir / "standalone-saturation")
    cluster = RedisClusterSet(workdir / "cluster-saturation", primaries=3)
    rounds: dict[str, list[dict[str, Any]]] = {"standalone_saturation": [], "cluster_saturation": []}
    try:
        with zero_work_services(workdir, standalone.url, concurrency) as (one, _), \
                zero_work_services(workdir, cluster.url, concurrency, REDIS_CLUSTER="true",
                                   REQUEST_STREAM_SHARDS="6") as (three, _):
            for _ in range(SATURATION_ROUNDS):
                for name, proxy in (("standalone_saturation", one), ("cluster_saturation", three)):
                    rounds[name].append(load(proxy.url, SATURATION_CLIENTS, seconds).summary())
    finally:
        cluster.stop()
        standalone.stop()
    medians = {}
    for name, runs in rounds.items():
        middle = sorted(runs, key=lambda run: run["requests_per_second"])[len(runs) // 2]
        medians[name] = {**middle, "rounds_requests_per_second": [run["requests_per_second"] for run in runs]}
    return medians


def scenario_async(workdir: Path, redis: RedisServer, concurrency: int, seconds: float) -> dict:
    """Zero work, the same proxy and worker, closed loop at the same concurrency: plain calls,
    async submit + poll (every 50 ms) and calls with an Idempotency-Key each, with what
    Redis and the processes spent per answered request."""
    runs = {}
    with zero_work_services(workdir, redis.url, concurrency) as (proxy, worker):
        processes = {"proxy": child_pids(proxy.pid), "worker": [worker.pid]}
        for name, options in (("sync", {}), ("async", {"asynchronous": True}),
                              ("idempotency_key", {"key_prefix": f"bench-{time.time_ns()}"}), ("sync_again", {})):
            result, cost, cpu = costed_load(redis, proxy.url, concurrency, seconds, processes, **options)
            runs[name] = {"load": result.summary(), "redis_cost": cost.summary(), "process_cpu": cpu}
    sync = runs["sync"]
    return {"runs": runs, "ratios": {
        name: {"requests_per_second": round(runs[name]["load"]["requests_per_second"]
                                            / sync["load"]["requests_per_second"], 3),
               "redis_commands": round(runs[name]["redis_cost"]["commands_per_request"]
                                       / sync["redis_cost"]["commands_per_request"], 3),
               "redis_cpu": round(runs[name]["redis_cost"]["cpu_us_per_request"]
                                  / sync["redis_cost"]["cpu_us_per_request"], 3)}
        for name in ("async", "idempotency_key", "sync_again")}}


def async_rows(table: Table, asynchronous: dict, concurrency: int) -> None:
    runs, ratios = asynchronous["runs"], asynchronous["ratios"]

    def described(name: str) -> str:
        run = runs[name]
        by_name = ", ".join(f"{command} {calls:.2f}" for command, calls
                            in run["redis_cost"]["commands_per_request_by_name"].items() if calls >= 0.01)
        return (f"{run['load']['requests_per_second']:.0f} req/s, Redis {run['redis_cost']['cpu_us_per_request']:.1f}"
                f" us and {run['redis_cost']['commands_per_request']:.2f} commands per request ({by_name})")

    table.add_row(f"6. zero work, {concurrency} clients: plain calls", described("sync"), "-", "-")
    for name, label in (("async", "async submit + poll (50 ms)"), ("idempotency_key", "Idempotency-Key on each"),
                        ("sync_again", "plain calls again (same run, after both)")):
        ratio = ratios[name]
        table.add_row(f"6. {label} vs plain calls",
                      described(name) + f" = {ratio['requests_per_second']:.2f}x req/s, "
                      f"{ratio['redis_commands']:.2f}x commands, {ratio['redis_cpu']:.2f}x Redis CPU", "-", "-")


def scenario_wait(workdir: Path, redis: RedisServer, concurrency: int, seconds: float) -> dict:
    replica = RedisServer(workdir / "replica", extra_args=["--replicaof", "127.0.0.1", str(redis.port)])
    try:
        wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up", 20,
                   what="replica in sync")
        without, _, _ = zero_work(workdir, redis, concurrency, seconds, REDIS_WAIT_REPLICAS="0")
        confirmed, _, _ = zero_work(workdir, redis, concurrency, seconds, REDIS_WAIT_REPLICAS="1")
    finally:
        replica.stop()
    return {"wait_0": without.summary(), "wait_1": confirmed.summary(),
            "ratio": round(confirmed.requests_per_second / without.requests_per_second, 3)}


def scenario_celery(workdir: Path, redis: RedisServer, concurrency: int, seconds: float) -> dict:
    env = {"BENCH_REDIS_URL": redis.url, "PYTHONPATH": str(ROOT)}
    worker = serve("celery-worker", [str(BIN / "celery"), "-A", "bench.celery_app", "worker", "-P", "gevent",
                                     "-c", str(concurrency), "--without-heartbeat", "--without-mingle",
                                     "--without-gossip", "-l", "warning"], workdir, **env)
    try:
        time.sleep(4)  # no readiness endpoint; the warm-up below absorbs the rest
        subprocess.run([sys.executable, "-m", "bench.celery_client", str(concurrency), "2"], cwd=ROOT,
                       env=base_env(**env), capture_output=True, timeout=120, check=True)
        run = subprocess.run([sys.executable, "-m", "bench.celery_client", str(concurrency), str(seconds)],
                             cwd=ROOT, env=base_env(**env), capture_output=True, text=True, timeout=300, check=True)
    finally:
        worker.stop()
    return json.loads(run.stdout.strip().splitlines()[-1])


def verdict(met: bool) -> str:
    return "[green]met[/green]" if met else "[red]not met[/red]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument("--concurrency", type=int, default=64, help="clients for scenarios 1 and 3")
    parser.add_argument("--only", choices=["sharding", "async", "overload", "thin"],
                        help="run only this scenario (its rows alone)")
    parser.add_argument("--sweep", action="store_true", help="with --only overload: goodput from 0.5x to 5x")
    parser.add_argument("--before", help="with --sweep or --only thin: also measure this git revision's code")
    args = parser.parse_args()
    if args.only == "overload":
        return overload_only(args)
    if args.only == "sharding":
        return sharding_only(args)
    if args.only == "thin":
        return thin_only(args)
    if args.only == "async":
        return async_only(args)
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        redis = RedisServer(workdir / "redis")
        try:
            console.print("1/7 zero-work overhead ...")
            overhead = scenario_overhead(workdir, redis, args.concurrency, args.seconds)
            redis.client().flushall()
            console.print("1/7 CPU per request against the floors: echo and minimal worker ...")
            thin = thin_bench.scenario_thin(workdir, args.seconds, args.concurrency, args.before)
            console.print("2/7 150 terminals x 150 ms, open loop at 0.8x, 1.5x and 3x of ideal ...")
            open_loop = scenario_open_loop(workdir, redis, args.seconds)
            redis.client().flushall()
            console.print("3/7 Celery peer ...")
            celery = scenario_celery(workdir, redis, args.concurrency, args.seconds)
            redis.client().flushall()
            console.print("4/7 WAIT for one replica vs none ...")
            durability = scenario_wait(workdir, redis, args.concurrency, args.seconds)
            redis.client().flushall()
            console.print("6/7 async submit + poll and Idempotency-Key vs plain calls ...")
            asynchronous = scenario_async(workdir, redis, args.concurrency, args.seconds)
            redis.client().flushall()
            console.print("7/7 overload: 2.4x and 5x of one worker, urgency, recovery, admission's cost ...")
            overload = overload_bench.scenario_overload(workdir, redis, args.seconds)
        finally:
            redis.stop()
        console.print("5/7 standalone vs a Redis Cluster of 3 primaries ...")
        sharding = scenario_cluster(workdir, args.concurrency, args.seconds)

    e2e_rps = overhead["end_to_end"]["requests_per_second"]
    celery_ratio = round(e2e_rps / celery["requests_per_second"], 2) if celery["requests_per_second"] else 0
    table = Table(title=f"make bench — {os.cpu_count()} cores, {args.seconds:g} s per run, one run")
    for column in ("comparison", "measured", "target", "verdict"):
        table.add_column(column)
    table.add_row("load generator ceiling (trivial asyncio server)",
                  f"{overhead['loadgen_ceiling']['requests_per_second']:.0f} req/s", "-", "-")
    cost = overhead["redis_cost"]
    table.add_row("0. Redis CPU per answered request, zero work", f"{cost['cpu_us_per_request']:.1f} us",
                  "<= 35 us", verdict(cost["cpu_us_per_request"] <= 35))
    table.add_row("0. Redis commands per answered request",
                  f"{cost['commands_per_request']:.2f} (" + ", ".join(
                      f"{name} {calls:.2f}" for name, calls in cost["commands_per_request_by_name"].items()
                      if calls >= 0.01) + ")", "<= 3.5", verdict(cost["commands_per_request"] <= 3.5))
    table.add_row("0. projected ceiling of one Redis core (1 s / CPU per request)",
                  f"{cost['ceiling_per_second']:,} req/s = {cost['ceiling_per_minute']:,} req/min", "-", "-")
    table.add_row("1. end to end vs bare Flask echo, zero work",
                  f"{e2e_rps:.0f} vs {overhead['echo']['requests_per_second']:.0f} req/s = {overhead['ratio']:.2f}x"
                  f" (p99 {overhead['end_to_end']['p99_ms']:.1f} vs {overhead['echo']['p99_ms']:.1f} ms)",
                  ">= 0.5x", verdict(overhead["ratio"] >= 0.5))
    cpu = overhead["process_cpu"]
    table.add_row("1. CPU per answered request, zero work (all proxy processes; the worker)",
                  f"proxy {cpu['proxy_cpu_ms_per_request']:.3f} ms = {1000 / cpu['proxy_cpu_ms_per_request']:,.0f} "
                  f"req/s per core; worker {cpu['worker_cpu_ms_per_request']:.3f} ms = "
                  f"{1000 / cpu['worker_cpu_ms_per_request']:,.0f} req/s per core", "-", "-")
    thin_bench.thin_rows(table, thin, verdict)
    runs = open_loop["runs"]
    light, saturated, flooded = runs["0.8x"], runs["1.5x"], runs["3x"]
    table.add_row("2. open loop 800 req/s (80%): p99 - 150 ms",
                  f"{light['p99_overhead_ms']:.1f} ms (p50 {light['p50_ms']:.0f} ms, {light['ok']} x 200, "
                  f"{light['failed']} failed)", "<= 20 ms", verdict(light["p99_overhead_ms"] <= 20))
    for label, run, target in (("1.5x", saturated, 0.95), ("3x", flooded, None)):
        refused = (f", 503 p99 {run['refused_p99_ms']:.0f} ms" if run["refused_p99_ms"] is not None else "")
        table.add_row(
            f"2. open loop {run['offered_share'] * 1000:,.0f} req/s ({label}): goodput",
            f"{run['ok_per_second']:.0f} req/s = {run['goodput_share']:.1%} of ideal; {run['ok']} x 200 "
            f"(p99 {run['p99_ms']:.0f} ms), {run['refused_503']} x 503{refused}, {run['timed_out_504']} x 504, "
            f"{run['other_failures']} other",
            ">= 95%, 0 x 504" if target else "0 x 504, 503 p99 <= 1 s",
            verdict((target is None or run["goodput_share"] >= target) and run["timed_out_504"] == 0
                    and (run["refused_p99_ms"] or 0) <= 1000))
    table.add_row(f"3. vs Celery at {args.concurrency} clients",
                  f"{e2e_rps:.0f} vs {celery['requests_per_second']:.0f} req/s = {celery_ratio:.2f}x",
                  ">= 5x", verdict(celery_ratio >= 5))
    table.add_row("4. zero work, REDIS_WAIT_REPLICAS=1 (local replica) vs 0",
                  f"{durability['wait_1']['requests_per_second']:.0f} vs "
                  f"{durability['wait_0']['requests_per_second']:.0f} req/s = {durability['ratio']:.2f}x "
                  f"(p99 {durability['wait_1']['p99_ms']:.1f} vs {durability['wait_0']['p99_ms']:.1f} ms)", "-", "-")
    sharding_rows(table, sharding)
    async_rows(table, asynchronous, args.concurrency)
    overload_bench.overload_rows(table, overload, verdict)
    console.print(table)

    record = {"date": datetime.now(UTC).isoformat(), "cores": os.cpu_count(), "machine": platform.machine(),
              "python": platform.python_version(), "seconds_per_run": args.seconds, "concurrency": args.concurrency,
              "overhead": overhead, "thin": thin, "open_loop": open_loop, "celery": celery,
              "celery_ratio": celery_ratio, "durability": durability,
              "sharding": sharding, "async": asynchronous, "overload": overload}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in (RESULTS / f"{stamp}.json", RESULTS / "latest.json"):
        path.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"results: bench/results/{stamp}.json")
    return 0


def sharding_rows(table: Table, sharding: dict) -> None:
    runs, ratios = sharding["runs"], sharding["ratios"]
    for processes in (2, 8):
        one, three = runs[f"standalone_{processes}p_{SAME_RATE}"], runs[f"cluster_{processes}p_{SAME_RATE}"]
        busiest, mean = ratios[f"{processes}p_busiest_vs_standalone"], ratios[f"{processes}p_busiest_vs_mean"]
        table.add_row(f"5. open loop {SAME_RATE} req/s, {processes} proxy processes: Redis CPU, 3 primaries "
                      "(6 shards) vs standalone",
                      " / ".join(f"{cpu:.2f}" for cpu in three["cpu_seconds"])
                      + f" s vs {one['busiest_cpu_seconds']:.2f} s: busiest {busiest:.2f}x standalone, "
                      f"{mean:.2f}x the primaries' mean ({three['load']['ok']} vs {one['load']['ok']} x 200)",
                      "<= 0.45x, <= 1.15x", verdict(busiest <= 0.45 and mean <= 1.15))
    per_server = ratios["per_server_busiest_vs_standalone"]
    table.add_row(f"5. same load per server: cluster at {SAME_RATE} vs standalone at {PER_SERVER_RATE} req/s, "
                  "busiest primary's CPU",
                  f"{runs[f'cluster_2p_{SAME_RATE}']['busiest_cpu_seconds']:.2f} vs "
                  f"{runs[f'standalone_2p_{PER_SERVER_RATE}']['busiest_cpu_seconds']:.2f} s = {per_server:.2f}x",
                  "<= 1.0x", verdict(per_server <= 1.0))
    saturation = ratios["saturation_rps"]
    table.add_row(f"5. saturation ({SATURATION_CLIENTS} clients, 2 proxy processes, median of {SATURATION_ROUNDS} "
                  "alternating rounds): cluster vs standalone",
                  f"{runs['cluster_saturation']['requests_per_second']:.0f} vs "
                  f"{runs['standalone_saturation']['requests_per_second']:.0f} req/s = {saturation:.2f}x",
                  ">= 0.85x", verdict(saturation >= 0.85))


def async_only(args: argparse.Namespace) -> int:
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        redis = RedisServer(Path(tmp) / "redis")
        try:
            asynchronous = scenario_async(Path(tmp), redis, args.concurrency, args.seconds)
        finally:
            redis.stop()
    table = Table(title=f"make bench --only async — {os.cpu_count()} cores, {args.seconds:g} s per run, one run")
    for column in ("comparison", "measured", "target", "verdict"):
        table.add_column(column)
    async_rows(table, asynchronous, args.concurrency)
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    record = {"date": datetime.now(UTC).isoformat(), "cores": os.cpu_count(), "seconds_per_run": args.seconds,
              "concurrency": args.concurrency, "async": asynchronous}
    (RESULTS / f"{stamp}-async.json").write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"results: bench/results/{stamp}-async.json")
    return 0


def overload_only(args: argparse.Namespace) -> int:
    os.chdir(ROOT)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        redis = RedisServer(workdir / "redis")
        try:
            if args.sweep:
                curves = {"admission (this code)": overload_bench.sweep(workdir, redis, ROOT, args.seconds)}
                if args.before:
                    redis.client().flushall()
                    with overload_bench.checkout(args.before) as code:
                        curves[f"before ({args.before})"] = overload_bench.sweep(workdir, redis, code, args.seconds)
                record = {"date": datetime.now(UTC).isoformat(), "seconds_per_point": args.seconds, "sweeps": curves}
                (RESULTS / f"{stamp}-overload-sweep.json").write_text(json.dumps(record, indent=2) + "\n")
                overload_bench.plot(curves, ROOT / "docs" / "overload.png")
                for label, points in curves.items():
                    console.print(label + ": " + ", ".join(f"{p['offered_share']:g}x -> {p['goodput_share']:.2f}x "
                                                           f"({p['timed_out_504']} x 504, {p['refused_503']} x 503)"
                                                           for p in points))
                console.print(f"results: bench/results/{stamp}-overload-sweep.json, plot: docs/overload.png")
                return 0
            overload = overload_bench.scenario_overload(workdir, redis, args.seconds)
        finally:
            redis.stop()
    table = Table(title=f"make bench --only overload — {os.cpu_count()} cores, one run")
    for column in ("comparison", "measured", "target", "verdict"):
        table.add_column(column)
    overload_bench.overload_rows(table, overload, verdict)
    console.print(table)
    record = {"date": datetime.now(UTC).isoformat(), "cores": os.cpu_count(), "overload": overload}
    (RESULTS / f"{stamp}-overload.json").write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"results: bench/results/{stamp}-overload.json")
    return 0


def thin_only(args: argparse.Namespace) -> int:
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        thin = thin_bench.scenario_thin(Path(tmp), args.seconds, args.concurrency, args.before)
    table = Table(title=f"make bench --only thin — {os.cpu_count()} cores, {args.seconds:g} s per run, "
                        f"medians of {thin['rounds']} rounds")
    for column in ("comparison", "measured", "target", "verdict"):
        table.add_column(column)
    thin_bench.thin_rows(table, thin, verdict)
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    record = {"date": datetime.now(UTC).isoformat(), "cores": os.cpu_count(), "thin": thin}
    (RESULTS / f"{stamp}-thin.json").write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"results: bench/results/{stamp}-thin.json")
    return 0


def sharding_only(args: argparse.Namespace) -> int:
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        sharding = scenario_cluster(Path(tmp), args.concurrency, args.seconds)
    table = Table(title=f"make bench --only sharding — {os.cpu_count()} cores, {args.seconds:g} s per run, one run")
    for column in ("comparison", "measured", "target", "verdict"):
        table.add_column(column)
    sharding_rows(table, sharding)
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    record = {"date": datetime.now(UTC).isoformat(), "cores": os.cpu_count(), "seconds_per_run": args.seconds,
              "sharding": sharding}
    (RESULTS / f"{stamp}-sharding.json").write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"results: bench/results/{stamp}-sharding.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
