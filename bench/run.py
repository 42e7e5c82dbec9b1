"""`make bench`: starts Redis, workers, the proxy and the peers itself, drives load and
prints one table, every figure measured in this run. Results go to bench/results/.

1. zero work: end to end through the stream vs a bare Flask echo on the same gunicorn
   configuration (the HTTP tier's ceiling). Target >= 0.5x.
2. the reference headline: 150 terminals, 150 ms of work. Target >= 95% of the ideal
   1,000 req/s and p99 - 150 ms <= 20 ms.
3. peer: Celery (Redis broker and result backend), apply_async + get at the same
   concurrency as 1. Target >= 5x Celery's req/s.
4. durability: zero work with REDIS_WAIT_REPLICAS=1 (each enqueue pipeline and each
   reply + ack confirmed by a local replica) vs 0, against the same primary and replica.
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
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tests.support.processes import BIN, ROOT, Managed, Proxy, RedisServer, Worker, base_env, free_port, wait_until
from tools.loadtest import LoadResult, check_ready, run_load

RESULTS = ROOT / "bench" / "results"
console = Console()


def load(url: str, concurrency: int, seconds: float, warmup: float = 2.0) -> LoadResult:
    asyncio.run(run_load(url, count=None, concurrency=concurrency, timeout=30, duration=warmup))
    return asyncio.run(run_load(url, count=None, concurrency=concurrency, timeout=30, duration=seconds))


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
    end_to_end = zero_work(workdir, redis, concurrency, seconds)
    return {"loadgen_ceiling": ceiling.summary(), "echo": bare.summary(), "end_to_end": end_to_end.summary(),
            "ratio": round(end_to_end.requests_per_second / bare.requests_per_second, 3)}


def scenario_headline(workdir: Path, redis: RedisServer, seconds: float, workers: int = 1,
                      delay: str = "150") -> dict:
    terminals, work_ms = 150, 150
    proxy = Proxy(workdir, redis.url, REQUEST_TIMEOUT_SECONDS="30", LOG_LEVEL="WARNING")
    pool = [Worker(workdir, redis.url, f"headline-{n}", PROCESSING_DELAY_MS=delay,
                   WORKER_TERMINALS=str(terminals // workers), LOG_LEVEL="WARNING") for n in range(workers)]
    try:
        proxy.wait_ready()
        for worker in pool:
            worker.wait_ready()
        result = load(proxy.url, terminals, seconds)
    finally:
        proxy.stop()
        for worker in pool:
            worker.stop()
    ideal = terminals / (work_ms / 1000)
    summary = result.summary()
    return {"terminals": terminals, "work_ms": work_ms, "worker_processes": workers, "ideal_rps": ideal,
            "result": summary, "fraction_of_ideal": round(result.requests_per_second / ideal, 3),
            "p99_overhead_ms": round(summary["p99_ms"] - work_ms, 2)}


def zero_work(workdir: Path, redis: RedisServer, concurrency: int, seconds: float, **env: str) -> LoadResult:
    proxy = Proxy(workdir, redis.url, REQUEST_TIMEOUT_SECONDS="30", LOG_LEVEL="WARNING", **env)
    worker = Worker(workdir, redis.url, f"zero-{free_port()}", PROCESSING_DELAY_MS="0",
                    WORKER_TERMINALS=str(concurrency), LOG_LEVEL="WARNING", **env)
    try:
        proxy.wait_ready()
        worker.wait_ready()
        return load(proxy.url, concurrency, seconds)
    finally:
        proxy.stop()
        worker.stop()


def scenario_wait(workdir: Path, redis: RedisServer, concurrency: int, seconds: float) -> dict:
    replica = RedisServer(workdir / "replica", extra_args=["--replicaof", "127.0.0.1", str(redis.port)])
    try:
        wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up", 20,
                   what="replica in sync")
        without = zero_work(workdir, redis, concurrency, seconds, REDIS_WAIT_REPLICAS="0")
        confirmed = zero_work(workdir, redis, concurrency, seconds, REDIS_WAIT_REPLICAS="1")
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
    args = parser.parse_args()
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        redis = RedisServer(workdir / "redis")
        try:
            console.print("1/4 zero-work overhead ...")
            overhead = scenario_overhead(workdir, redis, args.concurrency, args.seconds)
            redis.client().flushall()
            console.print("2/4 150 terminals x 150 ms (fixed, then 130-170 ms) ...")
            headline = scenario_headline(workdir, redis, args.seconds)
            redis.client().flushall()
            # Fixed work makes a closed loop march in lockstep waves; jitter shows the steady state.
            jittered = scenario_headline(workdir, redis, args.seconds, delay="130-170")
            redis.client().flushall()
            console.print("3/4 Celery peer ...")
            celery = scenario_celery(workdir, redis, args.concurrency, args.seconds)
            redis.client().flushall()
            console.print("4/4 WAIT for one replica vs none ...")
            durability = scenario_wait(workdir, redis, args.concurrency, args.seconds)
        finally:
            redis.stop()

    e2e_rps = overhead["end_to_end"]["requests_per_second"]
    celery_ratio = round(e2e_rps / celery["requests_per_second"], 2) if celery["requests_per_second"] else 0
    table = Table(title=f"make bench — {os.cpu_count()} cores, {args.seconds:g} s per run, one run")
    for column in ("comparison", "measured", "target", "verdict"):
        table.add_column(column)
    table.add_row("load generator ceiling (trivial asyncio server)",
                  f"{overhead['loadgen_ceiling']['requests_per_second']:.0f} req/s", "-", "-")
    table.add_row("1. end to end vs bare Flask echo, zero work",
                  f"{e2e_rps:.0f} vs {overhead['echo']['requests_per_second']:.0f} req/s = {overhead['ratio']:.2f}x"
                  f" (p99 {overhead['end_to_end']['p99_ms']:.1f} vs {overhead['echo']['p99_ms']:.1f} ms)",
                  ">= 0.5x", verdict(overhead["ratio"] >= 0.5))
    table.add_row("2. 150 terminals x 150 ms: throughput",
                  f"{headline['result']['requests_per_second']:.0f} req/s = {headline['fraction_of_ideal']:.1%}"
                  " of 1,000", ">= 95%", verdict(headline["fraction_of_ideal"] >= 0.95))
    table.add_row("2. 150 terminals x 150 ms: p99 - 150 ms", f"{headline['p99_overhead_ms']:.1f} ms", "<= 20 ms",
                  verdict(headline["p99_overhead_ms"] <= 20))
    table.add_row("2'. same with 130-170 ms work (no lockstep waves), for insight",
                  f"{jittered['result']['requests_per_second']:.0f} req/s = {jittered['fraction_of_ideal']:.1%}, "
                  f"p50 {jittered['result']['p50_ms']:.0f} ms, p99 {jittered['result']['p99_ms']:.0f} ms", "-", "-")
    table.add_row(f"3. vs Celery at {args.concurrency} clients",
                  f"{e2e_rps:.0f} vs {celery['requests_per_second']:.0f} req/s = {celery_ratio:.2f}x",
                  ">= 5x", verdict(celery_ratio >= 5))
    table.add_row("4. zero work, REDIS_WAIT_REPLICAS=1 (local replica) vs 0",
                  f"{durability['wait_1']['requests_per_second']:.0f} vs "
                  f"{durability['wait_0']['requests_per_second']:.0f} req/s = {durability['ratio']:.2f}x "
                  f"(p99 {durability['wait_1']['p99_ms']:.1f} vs {durability['wait_0']['p99_ms']:.1f} ms)", "-", "-")
    console.print(table)

    record = {"date": datetime.now(UTC).isoformat(), "cores": os.cpu_count(), "machine": platform.machine(),
              "python": platform.python_version(), "seconds_per_run": args.seconds, "concurrency": args.concurrency,
              "overhead": overhead, "headline": headline, "headline_jittered": jittered, "celery": celery,
              "celery_ratio": celery_ratio, "durability": durability}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in (RESULTS / f"{stamp}.json", RESULTS / "latest.json"):
        path.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"results: bench/results/{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
