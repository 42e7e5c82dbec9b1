"""`make bench` row 7: overload without collapse (README: Overload).

One worker of 5 terminals at 100-500 ms (about 16.7 requests a second), REQUEST_TIMEOUT_SECONDS
10, two proxies of 2 processes each taking the requests in turn, open loop:

- below capacity (12/s) and a burst of 50 at once: nothing refused;
- 2.4x (40/s): goodput, the 200s' p99, refusals (503 with Retry-After) and their p99, 504s,
  and work done for callers that had their answer already (the worker's ok count minus the 200s);
- 5x (80/s): goodput still near capacity;
- 2.4x with a quarter of the requests at Priority u=1: how those fare;
- recovery: 2.4x for 20 s, then 12/s: how long after the overload latencies are back;
- closed loops of 20 and 50 clients: nothing refused;
- fairness: a noisy caller at 2x (plain, then async) beside three polite ones at 0.1x each,
  callers told apart by their loopback address (127.0.0.2-5);
- retry storms: every refused request retried up to 3 times (half after Retry-After, half
  at once) at 2.4x, and at 1.5x with the worker stopped for 10 s;
- 4 proxies of 2 processes at 10x; work of 0.6x the deadline at 0.3x capacity, and 20 s of
  it followed by fast work at 0.7x;
- admission's own cost: proxy CPU per request at 300/s, zero work, on vs off (median of three
  alternating runs).

`--sweep` measures goodput from 0.5x to 5x of capacity, with `--before REV` the same for the
code of an earlier commit (a git worktree), and draws both into docs/overload.png.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.costs import child_pids, process_cpu_seconds
from tests.support.processes import ROOT, Proxy, RedisServer, Worker, queues_of, wait_until
from tools.load_runs import LoadResult, run_load, run_open_loop

TERMINALS, WORK_MS = 5, "100-500"
CAPACITY = TERMINALS / 0.3
TIMEOUT_SECONDS = 10.0
SWEEP_SHARES = (0.5, 1.0, 1.5, 2.4, 3.5, 5.0)


@contextmanager
def overload_services(workdir: Path, redis: RedisServer, code: Path = ROOT, proxies_count: int = 2,
                      terminals: int = TERMINALS, work_ms: str = WORK_MS, **proxy_env: str
                      ) -> Iterator[tuple[list[str], Worker]]:
    proxies = [Proxy(workdir, redis.url, code, REQUEST_TIMEOUT_SECONDS=f"{TIMEOUT_SECONDS:g}", LOG_LEVEL="WARNING",
                     WEB_CONCURRENCY="2", **proxy_env) for _ in range(proxies_count)]
    worker = Worker(workdir, redis.url, f"overload-{proxies[0].port}", code, WORKER_TERMINALS=str(terminals),
                    PROCESSING_DELAY_MS=work_ms, LOG_LEVEL="WARNING")
    try:
        for proxy in proxies:
            proxy.wait_ready()
        worker.wait_ready()
        urls = [proxy.url for proxy in proxies]
        # The worker learns its drain rate (and the proxies read it) before anything is measured.
        asyncio.run(run_open_loop(urls, rate=8, count=None, timeout=TIMEOUT_SECONDS + 5, duration=3))
        yield urls, worker
    finally:
        for process in (*proxies, worker):
            process.stop()


def _drained(redis: RedisServer) -> bool:
    client = redis.client()
    return all(not group["lag"] and not group["pending"]
               for queue in queues_of() if client.exists(queue) for group in client.xinfo_groups(queue))


def _quantile(values: list[float], fraction: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3) if ordered else None


def figures(result: LoadResult, seconds: float, worked: float | None = None) -> dict[str, Any]:
    statuses = [sample.status for sample in result.samples]
    ok = [sample.seconds for sample in result.samples if sample.status == 200]
    refused = [sample for sample in result.samples if sample.status == 503]
    # Goodput counts the 200s answered while the load lasted: a backlog served after it
    # ends (up to a deadline later) is not what the service sustains under that load.
    in_time = sum(1 for sample in result.samples if sample.status == 200 and sample.started + sample.seconds <= seconds)
    summary: dict[str, Any] = {
        "sent": len(statuses), "ok": len(ok), "goodput_per_second": round(in_time / seconds, 2),
        "goodput_share": round(in_time / seconds / CAPACITY, 3),
        "ok_p50_s": _quantile(ok, 0.5), "ok_p99_s": _quantile(ok, 0.99),
        "refused_503": len(refused), "refused_p99_s": _quantile([s.seconds for s in refused], 0.99),
        "refused_with_retry_after": sum(s.retry_after is not None for s in refused),
        "timed_out_504": statuses.count(504), "other": sum(s not in (200, 503, 504) for s in statuses),
    }
    if worked is not None:
        summary["work_for_callers_gone"] = int(worked - len(ok))
    return summary


def measured(urls: list[str], worker: Worker, redis: RedisServer, rate: float, seconds: float,
             urgency: Callable[[int], int | None] = lambda index: None) -> tuple[LoadResult, dict[str, Any]]:
    done_before = worker.metric("weather_worker_processed_total", {"outcome": "ok"})
    result = asyncio.run(run_open_loop(urls, rate=rate, count=None, timeout=TIMEOUT_SECONDS + 5, duration=seconds,
                                       urgency=urgency))
    wait_until(lambda: _drained(redis), 60, interval=0.5, what="queue drained")
    worked = worker.metric("weather_worker_processed_total", {"outcome": "ok"}) - done_before
    return result, {"rate": rate, **figures(result, seconds, worked)}


def burst(urls: list[str], size: int = 50) -> dict[str, Any]:
    result = asyncio.run(run_open_loop(urls, rate=10_000, count=size, timeout=TIMEOUT_SECONDS + 5))
    return figures(result, 1.0)


def recovery(urls: list[str], redis: RedisServer, baseline_p99: float, overload_seconds: float = 20,
             after_seconds: float = 25) -> dict[str, Any]:
    """12/s throughout and 28/s more for the first ``overload_seconds``: how long after the
    overload until every request of the steady stream is answered 200 within the baseline p99."""
    async def both() -> list[LoadResult]:
        return list(await asyncio.gather(
            run_open_loop(urls, rate=12, count=None, timeout=TIMEOUT_SECONDS + 5,
                          duration=overload_seconds + after_seconds),
            run_open_loop(urls, rate=28, count=None, timeout=TIMEOUT_SECONDS + 5, duration=overload_seconds)))

    steady, _ = asyncio.run(both())
    wait_until(lambda: _drained(redis), 60, interval=0.5, what="queue drained")
    late = [s.started for s in steady.samples
            if s.started >= overload_seconds and (s.status != 200 or s.seconds > baseline_p99 * 1.2)]
    back_after = max(late) - overload_seconds if late else 0.0
    after = [s.seconds for s in steady.samples if s.started >= overload_seconds + back_after and s.status == 200]
    return {"back_after_seconds": round(max(0.0, back_after), 2), "baseline_p99_s": baseline_p99,
            "p99_after_s": _quantile(after, 0.99)}


def admission_cost(workdir: Path, redis: RedisServer, rate: float = 300, seconds: float = 10,
                   rounds: int = 5) -> dict[str, Any]:
    """Proxy CPU per answered request, zero work, admission on and off, in alternating runs
    (on first, then off first: a machine that slows or speeds up favours neither)."""
    proxies = {"on": Proxy(workdir, redis.url, LOG_LEVEL="WARNING", WEB_CONCURRENCY="2"),
               "off": Proxy(workdir, redis.url, LOG_LEVEL="WARNING", WEB_CONCURRENCY="2", ADMISSION_ENABLED="false")}
    worker = Worker(workdir, redis.url, "admission-cost", WORKER_TERMINALS="50", PROCESSING_DELAY_MS="0",
                    LOG_LEVEL="WARNING")
    per_request: dict[str, list[float]] = {"on": [], "off": []}
    try:
        for proxy in proxies.values():
            proxy.wait_ready()
        worker.wait_ready()
        for round_number in range(rounds):
            for name in (("on", "off") if round_number % 2 == 0 else ("off", "on")):
                proxy = proxies[name]
                pids = child_pids(proxy.pid)
                asyncio.run(run_open_loop(proxy.url, rate=rate, count=None, timeout=30, duration=2))
                before = sum(map(process_cpu_seconds, pids))
                result = asyncio.run(run_open_loop(proxy.url, rate=rate, count=None, timeout=30, duration=seconds))
                spent = sum(map(process_cpu_seconds, pids)) - before
                per_request[name].append(spent * 1e6 / max(1, len(result.ok)))
    finally:
        for process in (*proxies.values(), worker):
            process.stop()
    on, off = statistics.median(per_request["on"]), statistics.median(per_request["off"])
    return {"rate": rate, "cpu_us_per_request": {k: [round(v, 1) for v in vs] for k, vs in per_request.items()},
            "median_on_us": round(on, 1), "median_off_us": round(off, 1), "ratio": round(on / off, 3)}


POLITE_SOURCES = ("127.0.0.3", "127.0.0.4", "127.0.0.5")


def fairness(urls: list[str], worker: Worker, redis: RedisServer, seconds: float,
             noisy_async: bool = False) -> dict[str, Any]:
    """A noisy caller (127.0.0.2) at 2x capacity, plain or async, and three polite ones at
    0.1x each, callers told apart by their address as a proxy without auth sees them."""
    async def together() -> list[LoadResult]:
        return list(await asyncio.gather(
            run_open_loop(urls, rate=2 * CAPACITY, count=None, timeout=TIMEOUT_SECONDS + 5, duration=seconds,
                          source="127.0.0.2", asynchronous=noisy_async),
            *(run_open_loop(urls, rate=0.1 * CAPACITY, count=None, timeout=TIMEOUT_SECONDS + 5, duration=seconds,
                            source=source) for source in POLITE_SOURCES)))

    done_before, began = worker.metric("weather_worker_processed_total", {"outcome": "ok"}), time.monotonic()
    noisy, *polite = asyncio.run(together())
    done = worker.metric("weather_worker_processed_total", {"outcome": "ok"}) - done_before
    elapsed = time.monotonic() - began  # async callers poll past the load's end
    if not noisy_async:
        wait_until(lambda: _drained(redis), 60, interval=0.5, what="queue drained")
    polite_figures = [{"sent": len(run.samples),
                       "ok_share": round(sum(s.status == 200 for s in run.samples) / max(1, len(run.samples)), 4),
                       "ok_p99_s": _quantile([s.seconds for s in run.samples if s.status == 200], 0.99)}
                      for run in polite]
    in_time = sum(1 for run in (noisy, *polite) for s in run.samples
                  if s.status == 200 and s.started + s.seconds <= seconds)
    polite_ok = sum(s.status == 200 for run in polite for s in run.samples)
    left = CAPACITY * elapsed - polite_ok
    return {"polite": polite_figures, "noisy": figures(noisy, seconds),
            "goodput_share": round(in_time / seconds / CAPACITY, 3),
            # The async caller's work done while the load lasted, of what the polite ones left.
            "noisy_work_share_of_left": round((done - polite_ok) / left, 3)}


def retry_storm(urls: list[str], redis: RedisServer, seconds: float) -> dict[str, Any]:
    """2.4x from clients that send a refused request again up to 3 times: half after its
    Retry-After, half at once."""
    result = asyncio.run(run_open_loop(urls, rate=40, count=None, timeout=TIMEOUT_SECONDS + 5, duration=seconds,
                                       retry=lambda index: "after" if index % 2 else "at-once"))
    wait_until(lambda: _drained(redis), 60, interval=0.5, what="queue drained")
    return {**figures(result, seconds), "retries": result.retries}


def workers_stopped(urls: list[str], worker: Worker, redis: RedisServer) -> dict[str, Any]:
    """1.5x from such retrying clients for 45 s; the worker stopped (SIGSTOP) from 10 s to
    20 s: how long after its return until goodput is back to 0.85x capacity."""
    import signal
    import threading

    def stop_for_a_while() -> None:
        time.sleep(10)
        worker.signal(signal.SIGSTOP)
        time.sleep(10)
        worker.signal(signal.SIGCONT)

    pause = threading.Thread(target=stop_for_a_while)
    pause.start()
    try:
        result = asyncio.run(run_open_loop(urls, rate=1.5 * CAPACITY, count=None, timeout=TIMEOUT_SECONDS + 5,
                                           duration=45, retry=lambda index: "after" if index % 2 else "at-once"))
    finally:
        pause.join()
        worker.signal(signal.SIGCONT)
    wait_until(lambda: _drained(redis), 60, interval=0.5, what="queue drained")
    answered = [s.started + s.seconds for s in result.samples if s.status == 200]
    per_second = [sum(1 for at in answered if second <= at < second + 1) for second in range(45)]
    # From the first second after the return on which every 3 s window until the end holds it.
    back = next((second - 20 for second in range(20, 42)
                 if all(sum(per_second[t:t + 3]) >= 3 * 0.85 * CAPACITY for t in range(second, 42))), None)
    return {"goodput_per_second": per_second, "back_after_seconds": back, "retries": result.retries}


def many_proxies(workdir: Path, redis: RedisServer, seconds: float) -> dict[str, Any]:
    """4 proxies of 2 processes each at 10x: they must not admit four times what one would."""
    with overload_services(workdir, redis, proxies_count=4) as (urls, worker):
        _, run = measured(urls, worker, redis, 10 * CAPACITY, seconds)
    return run


def slow_work(workdir: Path, redis: RedisServer) -> dict[str, Any]:
    """Work of 6 s (0.6x the 10 s deadline) on 20 terminals, at 1 a second (0.3x) for 60 s."""
    with overload_services(workdir, redis, proxies_count=1, terminals=20, work_ms="6000") as (urls, worker):
        _, run = measured(urls, worker, redis, 1.0, 60)
    return run


def slow_then_fast(workdir: Path, redis: RedisServer, slow_seconds: float = 20, after_seconds: float = 25
                   ) -> dict[str, Any]:
    """Work of 6 s at 1 a second (0.3x) for ``slow_seconds``; then fast work again (100-500 ms:
    the slow worker stops, finishing what it holds, as one of the usual kind takes over) at
    12 a second (0.7x of the fast capacity, 3.6x the slow one): how long after the change a
    request is still refused (goal: none later than 5 s after)."""
    import threading

    started: list[Worker] = []

    def work_gets_fast(slow: Worker) -> None:
        time.sleep(slow_seconds)
        started.append(Worker(workdir, redis.url, "fast-after-slow", ROOT, WORKER_TERMINALS=str(TERMINALS),
                              PROCESSING_DELAY_MS=WORK_MS, LOG_LEVEL="WARNING"))
        slow.stop(timeout=15)

    async def both(urls: list[str]) -> list[LoadResult]:
        async def fast_load() -> LoadResult:
            await asyncio.sleep(slow_seconds)
            return await run_open_loop(urls, rate=12, count=None, timeout=TIMEOUT_SECONDS + 5, duration=after_seconds)
        return list(await asyncio.gather(
            run_open_loop(urls, rate=1.0, count=None, timeout=TIMEOUT_SECONDS + 5, duration=slow_seconds),
            fast_load()))

    with overload_services(workdir, redis, proxies_count=1, terminals=20, work_ms="6000") as (urls, slow):
        change = threading.Thread(target=work_gets_fast, args=(slow,))
        change.start()
        try:
            slow_run, fast_run = asyncio.run(both(urls))
            wait_until(lambda: _drained(redis), 60, interval=0.5, what="queue drained")
        finally:
            change.join()
            for worker in started:
                worker.stop()
    # From the fast load's start, which is the fast worker's (its own start-up included).
    refused_at = [sample.started for sample in fast_run.samples if sample.status in (503, 504)]
    return {"slow": figures(slow_run, slow_seconds), "fast": figures(fast_run, after_seconds),
            "last_refusal_after_change_s": round(max(refused_at), 2) if refused_at else None}


def closed_loops(urls: list[str]) -> dict[str, Any]:
    """20 and 50 clients that each wait for their answer: never more queued than clients."""
    runs = {}
    for clients in (20, 50):
        result = asyncio.run(run_load(urls[0], count=6 * clients, concurrency=clients, timeout=TIMEOUT_SECONDS + 5))
        runs[str(clients)] = figures(result, max(result.wall_seconds, 1.0))
    return runs


def scenario_overload(workdir: Path, redis: RedisServer, seconds: float) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    with overload_services(workdir, redis) as (urls, worker):
        _, runs["below"] = measured(urls, worker, redis, 12, max(seconds, 20))
        runs["burst"] = burst(urls)
        wait_until(lambda: _drained(redis), 60, interval=0.5, what="queue drained")
        _, runs["2.4x"] = measured(urls, worker, redis, 40, max(seconds, 40))
        _, runs["5x"] = measured(urls, worker, redis, 80, max(seconds, 20))
        mixed, runs["2.4x_urgent"] = measured(urls, worker, redis, 40, max(seconds, 40),
                                              urgency=lambda index: 1 if index % 4 == 0 else None)
        urgent = [s for s in mixed.samples if s.urgency == 1]
        runs["2.4x_urgent"]["u1"] = {
            "sent": len(urgent), "ok_share": round(sum(s.status == 200 for s in urgent) / max(1, len(urgent)), 4),
            "ok_p99_s": _quantile([s.seconds for s in urgent if s.status == 200], 0.99)}
        runs["recovery"] = recovery(urls, redis, runs["below"]["ok_p99_s"] or 1.0)
        runs["closed_loops"] = closed_loops(urls)
        runs["fair"] = fairness(urls, worker, redis, max(seconds, 30))
        runs["retry_storm"] = retry_storm(urls, redis, max(seconds, 30))
        runs["workers_stopped"] = workers_stopped(urls, worker, redis)
        runs["fair_async"] = fairness(urls, worker, redis, max(seconds, 30), noisy_async=True)
    # The async caller's backlog (an hour's worth) is nobody's work any more.
    redis.client().delete("weather-requests", "weather-requests:urgent")
    runs["many_proxies"] = many_proxies(workdir, redis, max(seconds, 20))
    runs["slow_work"] = slow_work(workdir, redis)
    runs["slow_then_fast"] = slow_then_fast(workdir, redis)
    runs["admission_cost"] = admission_cost(workdir, redis)
    return {"capacity_per_second": round(CAPACITY, 2), "timeout_seconds": TIMEOUT_SECONDS, "runs": runs}


def overload_rows(table: Any, overload: dict[str, Any], verdict: Callable[[bool], str]) -> None:
    runs, capacity = overload["runs"], overload["capacity_per_second"]
    below, burst_run = runs["below"], runs["burst"]
    table.add_row("7. overload: 1 worker (5 x 100-500 ms = 16.7/s), 2 proxies, timeout 10 s; 12/s and a burst of 50",
                  f"12/s: {below['ok']}/{below['sent']} x 200, {below['refused_503']} refused (p99 "
                  f"{below['ok_p99_s']} s); burst: {burst_run['ok']}/{burst_run['sent']} x 200",
                  "no refusal, 50/50", verdict(below["refused_503"] == 0 and burst_run["ok"] == burst_run["sent"]))
    flood = runs["2.4x"]
    sent = flood["sent"]
    met = (flood["goodput_per_second"] >= 0.85 * capacity and (flood["ok_p99_s"] or 99) <= TIMEOUT_SECONDS / 2
           and (flood["refused_p99_s"] or 0) <= 0.2 and flood["refused_with_retry_after"] == flood["refused_503"]
           and flood["timed_out_504"] <= 0.02 * sent and flood["work_for_callers_gone"] <= 0.05 * flood["ok"])
    table.add_row("7. 2.4x (40/s): goodput, 200s p99, refusals, 504s, work for callers gone",
                  f"{flood['goodput_per_second']}/s = {flood['goodput_share']:.0%} of capacity; p99 "
                  f"{flood['ok_p99_s']} s; {flood['refused_503']} x 503 (p99 {flood['refused_p99_s']} s, "
                  f"{flood['refused_with_retry_after']} with Retry-After); {flood['timed_out_504']} x 504 of {sent}; "
                  f"{flood['work_for_callers_gone']} wasted",
                  ">= 85%, <= 5 s, <= 0.2 s, <= 2%, <= 5%", verdict(met))
    five = runs["5x"]
    table.add_row("7. 5x (80/s): goodput", f"{five['goodput_per_second']}/s = {five['goodput_share']:.0%} of capacity "
                  f"({five['timed_out_504']} x 504)", ">= 80%", verdict(five["goodput_share"] >= 0.8))
    urgent = runs["2.4x_urgent"]["u1"]
    limit = 1.5 * (below["ok_p99_s"] or 0)
    table.add_row("7. 2.4x, a quarter at u=1: the u=1 requests",
                  f"{urgent['ok_share']:.1%} x 200, p99 {urgent['ok_p99_s']} s (1.5x the 12/s p99: {limit:.2f} s)",
                  ">= 99%, <= 1.5x", verdict(urgent["ok_share"] >= 0.99 and (urgent["ok_p99_s"] or 99) <= limit))
    back = runs["recovery"]
    table.add_row("7. after 20 s at 2.4x, back to 12/s: latency back to the 12/s p99 (x1.2) after",
                  f"{back['back_after_seconds']} s (p99 after: {back['p99_after_s']} s)", "<= 7 s (target + 2)",
                  verdict(back["back_after_seconds"] <= TIMEOUT_SECONDS / 2 + 2))
    loops = runs["closed_loops"]
    table.add_row("7. closed loops of 20 and of 50 clients: refusals",
                  f"{loops['20']['refused_503']} of {loops['20']['sent']}, {loops['50']['refused_503']} of "
                  f"{loops['50']['sent']} (p99 {loops['20']['ok_p99_s']} / {loops['50']['ok_p99_s']} s)", "0",
                  verdict(loops["20"]["refused_503"] == 0 and loops["50"]["refused_503"] == 0))
    fair = runs["fair"]
    worst = min(polite["ok_share"] for polite in fair["polite"])
    slowest = max(polite["ok_p99_s"] or 99 for polite in fair["polite"])
    table.add_row("7. a noisy caller at 2x + 3 polite at 0.1x each: polite 200s, their p99, goodput",
                  f"worst {worst:.1%} x 200, p99 up to {slowest} s (1.5x the 12/s p99: {limit:.2f} s); goodput "
                  f"{fair['goodput_share']:.0%} of capacity",
                  ">= 99%, <= 1.5x, >= 85%",
                  verdict(worst >= 0.99 and slowest <= limit and fair["goodput_share"] >= 0.85))
    fair_async = runs["fair_async"]
    worst_async = min(polite["ok_share"] for polite in fair_async["polite"])
    table.add_row("7. the same, the noisy caller async (Prefer: respond-async): polite 200s, async work done",
                  f"worst {worst_async:.1%} x 200; async work {fair_async['noisy_work_share_of_left']:.0%} of the "
                  "capacity the polite callers leave", ">= 99%, >= 80%",
                  verdict(worst_async >= 0.99 and fair_async["noisy_work_share_of_left"] >= 0.8))
    storm = runs["retry_storm"]
    table.add_row("7. 2.4x, every refused request retried up to 3 times (half after Retry-After, half at once)",
                  f"goodput {storm['goodput_share']:.0%} of capacity ({storm['retries']} retries, "
                  f"{storm['timed_out_504']} x 504)", ">= 85%", verdict(storm["goodput_share"] >= 0.85))
    stopped = runs["workers_stopped"]
    table.add_row("7. 1.5x with such clients, the worker stopped 10 s: goodput back to 85% after its return",
                  f"{stopped['back_after_seconds']} s", "<= 10 s",
                  verdict(stopped["back_after_seconds"] is not None and stopped["back_after_seconds"] <= 10))
    many = runs["many_proxies"]
    table.add_row("7. 4 proxies x 2 processes at 10x: goodput, refusals' p99, 504s",
                  f"{many['goodput_share']:.0%} of capacity; 503 p99 {many['refused_p99_s']} s; "
                  f"{many['timed_out_504']} x 504 of {many['sent']}", ">= 85%, <= 0.2 s, <= 2%",
                  verdict(many["goodput_share"] >= 0.85 and (many["refused_p99_s"] or 0) <= 0.2
                          and many["timed_out_504"] <= 0.02 * many["sent"]))
    slow = runs["slow_work"]
    table.add_row("7. work of 0.6x the deadline at 0.3x capacity for 60 s: 200s",
                  f"{slow['ok']}/{slow['sent']} ({slow['refused_503']} refused)", "every one",
                  verdict(slow["ok"] == slow["sent"]))
    then = runs["slow_then_fast"]
    last = then["last_refusal_after_change_s"]
    table.add_row("7. 20 s of such slow work, then fast work at 12/s: the last 503 or 504 after the change",
                  "none" if last is None else f"{last} s ({then['fast']['refused_503']} refused, "
                  f"{then['fast']['timed_out_504']} timed out of {then['fast']['sent']})", "<= 5 s",
                  verdict(last is None or last <= 5))
    cost = runs["admission_cost"]
    table.add_row("7. admission's cost: proxy CPU per request at 300/s, zero work, on vs off (medians, 5 pairs)",
                  f"{cost['median_on_us']} vs {cost['median_off_us']} us = {cost['ratio']:.3f}x", "<= 1.05x",
                  verdict(cost["ratio"] <= 1.05))


def sweep(workdir: Path, redis: RedisServer, code: Path, seconds: float) -> list[dict[str, Any]]:
    points = []
    with overload_services(workdir, redis, code) as (urls, worker):
        for share in SWEEP_SHARES:
            _, point = measured(urls, worker, redis, share * CAPACITY, seconds)
            points.append({"offered_share": share, **point})
    return points


@contextmanager
def checkout(revision: str) -> Iterator[Path]:
    """An earlier commit's code in a git worktree, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-before-") as tmp:
        path = Path(tmp) / "code"
        subprocess.run(["git", "worktree", "add", "--detach", str(path), revision], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False,
                           capture_output=True)


def plot(curves: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for label, points in curves.items():
        axes.plot([p["offered_share"] for p in points], [p["goodput_share"] for p in points], marker="o", label=label)
    axes.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axes.set_xlabel("offered load (x capacity: 1 worker, 5 terminals at 100-500 ms = 16.7 req/s)")
    axes.set_ylabel("goodput: 200s per second (x capacity)")
    axes.set_ylim(0, 1.2)
    axes.set_title("Goodput against offered load, timeout 10 s, open loop")
    axes.legend()
    figure.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(figure)
