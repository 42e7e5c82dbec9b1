"""Concurrent HTTP load from the test itself, bounded in count and time."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests


@dataclass
class Result:
    index: int
    city: str
    status: int | None
    body: dict | None
    seconds: float
    error: str | None = None
    # When it was sent (time.monotonic()), for load that runs across an event.
    started: float = 0.0


def ask(base_url: str, index: int, timeout: float) -> Result:
    city = f"city-{index}"
    started = time.monotonic()
    try:
        response = requests.post(
            base_url + "/WeatherForecast/city", json={"city": city, "location": f"loc-{index}"}, timeout=timeout
        )
    except requests.RequestException as error:
        return Result(index, city, None, None, time.monotonic() - started, repr(error), started)
    try:
        body = response.json()
    except ValueError:
        body = None
    return Result(index, city, response.status_code, body, time.monotonic() - started, started=started)


def fire(base_urls: list[str], count: int, concurrency: int, timeout: float = 30, start: int = 0) -> list[Result]:
    """Send `count` requests spread round-robin over `base_urls`."""
    urls = itertools.cycle(base_urls)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(ask, next(urls), start + i, timeout) for i in range(count)]
        return [future.result() for future in futures]


def replies_per_request(clients: list) -> Counter:
    """How many replies each request id got, over every reply stream of these Redis nodes."""
    from app.shared.contract import REPLY_STREAM_PREFIX, Reply

    counts: Counter = Counter()
    for client in clients:
        for stream in client.scan_iter(match=REPLY_STREAM_PREFIX + "*", _type="stream"):
            for _, fields in client.xrange(stream):
                counts[Reply.from_fields(fields).request_id] += 1
    return counts


def statuses(results: list[Result]) -> Counter:
    return Counter(result.status for result in results)


def summary(label: str, results: list[Result]) -> str:
    counts = statuses(results)
    return (f"{label}: sent={len(results)} 200={counts.get(200, 0)} 503={counts.get(503, 0)} "
            f"504={counts.get(504, 0)} other={sum(v for k, v in counts.items() if k not in (200, 503, 504))}")


class SteadyLoad:
    """Requests started at a fixed rate in the background, whatever the answers (open loop),
    until stopped or `max_seconds` have passed; bounded in count and time."""

    def __init__(self, base_url: str | Callable[[], str], rate: float, max_seconds: float, timeout: float = 30,
                 start: int = 0) -> None:
        # A callable picks the URL of each request: a set of proxies that changes under load.
        self._url = base_url if callable(base_url) else lambda: base_url
        self._rate, self._timeout, self._start = rate, timeout, start
        self._max_seconds = max_seconds
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=64)
        self._futures: list = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        began = time.monotonic()
        for n in itertools.count():
            scheduled = began + n / self._rate
            if self._stop.wait(max(0.0, scheduled - time.monotonic())) or scheduled - began > self._max_seconds:
                return
            self._futures.append(self._pool.submit(ask, self._url(), self._start + n, self._timeout))

    def stop(self) -> list[Result]:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)
        return [future.result() for future in self._futures]
