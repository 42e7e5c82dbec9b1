"""Concurrent HTTP load from the test itself, bounded in count and time."""

from __future__ import annotations

import itertools
import time
from collections import Counter
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


def ask(base_url: str, index: int, timeout: float) -> Result:
    city = f"city-{index}"
    started = time.monotonic()
    try:
        response = requests.post(
            base_url + "/WeatherForecast/city", json={"city": city, "location": f"loc-{index}"}, timeout=timeout
        )
    except requests.RequestException as error:
        return Result(index, city, None, None, time.monotonic() - started, repr(error))
    try:
        body = response.json()
    except ValueError:
        body = None
    return Result(index, city, response.status_code, body, time.monotonic() - started)


def fire(base_urls: list[str], count: int, concurrency: int, timeout: float = 30, start: int = 0) -> list[Result]:
    """Send `count` requests spread round-robin over `base_urls`."""
    urls = itertools.cycle(base_urls)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(ask, next(urls), start + i, timeout) for i in range(count)]
        return [future.result() for future in futures]


def statuses(results: list[Result]) -> Counter:
    return Counter(result.status for result in results)


def summary(label: str, results: list[Result]) -> str:
    counts = statuses(results)
    return (f"{label}: sent={len(results)} 200={counts.get(200, 0)} 503={counts.get(503, 0)} "
            f"504={counts.get(504, 0)} other={sum(v for k, v in counts.items() if k not in (200, 503, 504))}")
