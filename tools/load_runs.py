"""The load itself: requests sent closed loop (N clients) or open loop (a fixed schedule),
each one's status and latency, and the figures of a run. `python -m tools.loadtest` and
`make bench` drive it."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from rich.progress import Progress
from yarl import URL

CITY_PATH = "/WeatherForecast/city"
# --async: how often a pending result is asked for again (the proxy's Retry-After is a
# whole second, too coarse to measure the work's latency with).
POLL_INTERVAL_SECONDS = 0.05
# The problems by which a service refuses work it cannot do in time (503 with Retry-After):
# the intended answer to overload, reported apart from failures.
REFUSALS = ("over_capacity", "overloaded")


@dataclass
class Sample:
    started: float  # seconds since the run began (open loop: when it was scheduled to start)
    seconds: float  # until the answer, from `started`
    status: int | None
    error: str | None = None
    # Open loop: how late this tool actually sent it. Large values mean the tool, not
    # the service, could not keep the schedule.
    send_lag: float = 0.0
    # A refusal's problem code and Retry-After (seconds), when the answer was one.
    refusal: str | None = None
    retry_after: float | None = None
    urgency: int | None = None

    @property
    def refused(self) -> bool:
        return self.refusal is not None


def _quantile(values: list[float], fraction: float) -> float:
    if not values:
        return math.nan
    return values[min(len(values) - 1, max(0, math.ceil(fraction * len(values)) - 1))]


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    wall_seconds: float = 0.0
    # Open loop with retries: refused requests sent again.
    retries: int = 0

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.status == 200]

    @property
    def failed(self) -> list[Sample]:
        """Neither answered nor refused (a refusal with Retry-After is the answer to overload)."""
        return [s for s in self.samples if s.status != 200 and not s.refused]

    @property
    def refused(self) -> list[Sample]:
        return [s for s in self.samples if s.refused]

    @property
    def requests_per_second(self) -> float:
        return len(self.samples) / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def ok_per_second(self) -> float:
        return len(self.ok) / self.wall_seconds if self.wall_seconds else 0.0

    def percentile(self, fraction: float, only_ok: bool = True) -> float:
        return _quantile(sorted(s.seconds for s in (self.ok if only_ok else self.samples)), fraction)

    def summary(self) -> dict[str, float | int]:
        latencies = [s.seconds for s in self.ok]
        refused = sorted(s.seconds for s in self.refused)
        retry_after = sorted(s.retry_after for s in self.refused if s.retry_after is not None)
        return {
            "sent": len(self.samples), "ok": len(self.ok), "failed": len(self.failed), "refused": len(refused),
            "refused_p99_ms": round(_quantile(refused, 0.99) * 1000, 2),
            "retry_after_median_s": _quantile(retry_after, 0.5), "retry_after_max_s": _quantile(retry_after, 1.0),
            "seconds": round(self.wall_seconds, 3), "requests_per_second": round(self.requests_per_second, 1),
            "ok_per_second": round(self.ok_per_second, 1),
            "send_lag_p99_ms": round(_quantile(sorted(s.send_lag for s in self.samples), 0.99) * 1000, 2),
            "p50_ms": round(self.percentile(0.50) * 1000, 2), "p90_ms": round(self.percentile(0.90) * 1000, 2),
            "p99_ms": round(self.percentile(0.99) * 1000, 2),
            "max_ms": round(max(latencies) * 1000, 2) if latencies else math.nan,
            "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else math.nan,
        }


@dataclass(frozen=True)
class Answer:
    status: int
    refusal: str | None = None
    retry_after: float | None = None


async def _answer(response: aiohttp.ClientResponse) -> Answer:
    body = await response.read()
    if response.status != 503 or "Retry-After" not in response.headers:
        return Answer(response.status)
    try:
        code = (await response.json(content_type=None)).get("error") if body else None
        retry_after = float(response.headers["Retry-After"])
    except (ValueError, AttributeError):
        return Answer(response.status)
    return Answer(response.status, code if code in REFUSALS else None, retry_after)


async def _one(session: aiohttp.ClientSession, url: str, index: int, timeout: float, began: float,
               body: dict[str, Any] | None, scheduled: float | None = None, asynchronous: bool = False,
               key_prefix: str | None = None, urgency: int | None = None) -> Sample:
    payload = body if body is not None else {"city": f"City-{index}", "location": "loadtest"}
    headers = {} if key_prefix is None else {"Idempotency-Key": f"{key_prefix}-{index}"}
    if urgency is not None:
        headers["Priority"] = f"u={urgency}"
    sent = time.perf_counter()
    started = sent if scheduled is None else scheduled
    answer = Answer(0)
    try:
        if asynchronous:
            answer = await _submit_and_poll(session, url, payload, started + timeout, headers)
        else:
            async with session.post(url, json=payload, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                answer = await _answer(response)
        status: int | None = answer.status
        error = None if status == 200 else f"HTTP {status}" + (f" {answer.refusal}" if answer.refusal else "")
    except (TimeoutError, aiohttp.ClientError) as exc:
        status, error = None, type(exc).__name__ + (f": {exc}" if str(exc) else "")
    return Sample(started - began, time.perf_counter() - started, status, error, sent - started,
                  answer.refusal, answer.retry_after, urgency)


async def _submit_and_poll(session: aiohttp.ClientSession, url: str, payload: dict[str, Any], give_up_at: float,
                           headers: dict[str, str]) -> Answer:
    """Prefer: respond-async, then GET the Location until it is no longer 202: the status
    of the result (the latency counts to it)."""
    def left() -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=max(0.001, give_up_at - time.perf_counter()))

    async with session.post(url, json=payload, headers={"Prefer": "respond-async", **headers},
                            timeout=left()) as response:
        submitted = await _answer(response)
        if submitted.status != 202:
            return submitted
        location = response.headers["Location"]
    result_url = str(URL(url).join(URL(location)))
    while True:
        await asyncio.sleep(POLL_INTERVAL_SECONDS)
        if time.perf_counter() >= give_up_at:
            raise TimeoutError("the result was not ready in time")
        async with session.get(result_url, timeout=left()) as answer:
            await answer.read()
            if answer.status != 202:
                return Answer(answer.status)


async def run_load(url: str, *, count: int | None, concurrency: int, timeout: float, duration: float | None = None,
                   path: str = CITY_PATH, body: dict[str, Any] | None = None, progress: Progress | None = None,
                   asynchronous: bool = False, key_prefix: str | None = None, source: str | None = None
                   ) -> LoadResult:
    """Closed loop: `concurrency` clients each send their next request when the last one answered.
    ``key_prefix``: each request gets its own Idempotency-Key ``<prefix>-<index>``; ``source``:
    the local address to send from (a caller of its own: 127.0.0.2, 127.0.0.3, ...)."""
    target = url.rstrip("/") + path
    result = LoadResult()
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, ttl_dns_cache=300,
                                     local_addr=(source, 0) if source else None)
    next_index = 0
    began = time.perf_counter()
    stop_at = began + duration if duration else None
    task = progress.add_task("requests", total=count if stop_at is None else None) if progress else None

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while True:
            if stop_at is not None and time.perf_counter() >= stop_at:
                return
            if stop_at is None and next_index >= (count or 0):
                return
            index = next_index
            next_index += 1
            result.samples.append(await _one(session, target, index, timeout, began, body,
                                             asynchronous=asynchronous, key_prefix=key_prefix))
            if progress is not None and task is not None:
                progress.advance(task)

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    result.wall_seconds = time.perf_counter() - began
    return result


RETRIES = 3


async def run_open_loop(url: str | Sequence[str], *, rate: float, count: int | None, timeout: float,
                        duration: float | None = None, path: str = CITY_PATH, body: dict[str, Any] | None = None,
                        progress: Progress | None = None, max_connections: int = 4000, asynchronous: bool = False,
                        urgency: Callable[[int], int | None] = lambda index: None,
                        source: str | None = None,
                        retry: Callable[[int], str] = lambda index: "never") -> LoadResult:
    """Open loop: request i is due at i / rate seconds, sent then whether or not earlier
    ones answered; its latency counts from that due time (no coordinated omission).
    Several URLs (proxies) take the requests in turn; ``urgency(i)`` sets request i's
    Priority (None: no header); ``source``: the local address to send from; ``retry(i)``:
    what request i's client does with a 503, up to RETRIES more times: "never", "after" its
    Retry-After, or "at-once" (a sample is the last answer, its latency from the due time)."""
    targets = [base.rstrip("/") + path for base in ([url] if isinstance(url, str) else url)]
    result = LoadResult()
    total = count if duration is None else math.ceil(duration * rate)
    connector = aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=300,
                                     local_addr=(source, 0) if source else None)
    task = progress.add_task("requests", total=total) if progress else None
    began = time.perf_counter()

    async def fire(session: aiohttp.ClientSession, index: int, scheduled: float) -> None:
        way = retry(index)
        for attempt in range(RETRIES + 1):
            sample = await _one(session, targets[index % len(targets)], index, timeout, began, body,
                                scheduled, asynchronous, urgency=urgency(index))
            if sample.status != 503 or way == "never" or attempt == RETRIES:
                break
            result.retries += 1
            if way == "after" and sample.retry_after:
                await asyncio.sleep(sample.retry_after)
        result.samples.append(sample)
        if progress is not None and task is not None:
            progress.advance(task)

    async with aiohttp.ClientSession(connector=connector) as session:
        in_flight: set[asyncio.Task[None]] = set()
        for index in range(total or 0):
            scheduled = began + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            request = asyncio.create_task(fire(session, index, scheduled))
            in_flight.add(request)
            request.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
    # Throughput over the schedule, not over the tail of the last answers.
    result.wall_seconds = max(time.perf_counter() - began, (total or 0) / rate)
    return result


async def check_ready(url: str) -> str | None:
    try:
        async with aiohttp.ClientSession() as session, session.get(
            url.rstrip("/") + "/readyz", timeout=aiohttp.ClientTimeout(total=5)
        ) as response:
            if response.status == 200:
                return None
            return f"/readyz answered {response.status}: {(await response.text())[:200]}"
    except (TimeoutError, aiohttp.ClientError) as exc:
        return f"/readyz unreachable: {type(exc).__name__} {exc}"
