"""The soak's open-loop mix and its history: every request as it was sent and every answer.

Each request starts on schedule whatever the earlier ones got (open loop), through the
proxies in turn, on a new connection (a caller of a killed proxy process sees its
connection broken, not a stale keep-alive). A caller retries a broken connection with the
same request (id, key), as a client library would; everything else is final. The mix:
synchronous requests, ``Prefer: respond-async`` polled until done, Idempotency-Key requests,
repeats of earlier keys (first those whose caller got no 200) and invalid inputs, each
with the answer it must get."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

PATH = "/WeatherForecast/city"
POLL_SECONDS = 0.5
# kind -> share of the requests
MIX = {"sync": 0.5, "async": 0.15, "idempotent": 0.15, "repeat": 0.08, "invalid": 0.12}
# Invalid inputs and what each must get: (name, headers, raw body, status, error code).
INVALID = [
    ("malformed_json", {"Content-Type": "application/json"}, b'{"city": ', 400, "malformed_json"),
    ("not_json", {"Content-Type": "text/plain"}, b"city=Oslo", 415, "unsupported_media_type"),
    ("no_location", {"Content-Type": "application/json"}, b'{"city": "Oslo"}', 422, "validation_error"),
    ("blank_city", {"Content-Type": "application/json"}, b'{"city": "  ", "location": "x"}', 422,
     "validation_error"),
    ("city_too_long", {"Content-Type": "application/json"},
     b'{"city": "' + b"x" * 201 + b'", "location": "x"}', 422, "validation_error"),
    ("bad_idempotency_key", {"Content-Type": "application/json", "Idempotency-Key": "k" * 256},
     b'{"city": "Oslo", "location": "x"}', 400, "invalid_idempotency_key"),
]


@dataclass
class Attempt:
    sent: float  # seconds since the soak started
    answered: float
    status: int | None
    body: Any = None  # the JSON answer, when there is one
    content_type: str = ""
    error: str | None = None  # why there is no status (connection broken, no answer in time)


@dataclass
class Request:
    number: int
    kind: str
    request_id: str
    city: str
    location: str
    deadline_seconds: float
    key: str | None = None
    invalid: str | None = None  # the name of the invalid input
    expected: tuple[int, str] | None = None  # an invalid input's status and error code
    attempts: list[Attempt] = field(default_factory=list)
    # async: the id, each poll's answer, the last (the result), and re-reads of it later
    async_id: str | None = None
    polls: list[Attempt] = field(default_factory=list)
    rereads: list[Attempt] = field(default_factory=list)

    @property
    def final(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def result(self) -> Attempt | None:
        """An async request's result: its last poll (the accepted answer when not async)."""
        return self.polls[-1] if self.polls else self.final


class Traffic:
    """Open-loop requests at ``rate`` per second until stopped; the history in ``requests``."""

    def __init__(self, urls: Callable[[], list[str]], rate: float, seed: int, *, deadline_seconds: float,
                 async_deadline_seconds: float, clock: Callable[[], float]) -> None:
        self._urls = urls
        self._rate = rate
        self._rng = random.Random(seed)
        self._deadline = deadline_seconds
        self._async_deadline = async_deadline_seconds
        self._now = clock
        self.requests: list[Request] = []
        self._stop = threading.Event()
        self._abandoned = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="soak-caller")
        self._thread = threading.Thread(target=self._run, name="soak-traffic", daemon=True)
        self._turn = itertools.count()

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> list[Request]:
        """Stops sending, then waits for every caller's final answer (and async result)."""
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)
        return self.requests

    def abandon(self) -> None:
        """The run was stopped: no request from now on, no caller tries again or polls on."""
        self._abandoned.set()
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def after_the_faults(self, count: int) -> list[Request]:
        """``count`` Idempotency-Key requests (fresh keys: every shard gets some) and as many
        plain ones, one at a time, once the faults are over and the load has stopped."""
        asked = []
        for number in range(len(self.requests), len(self.requests) + 2 * count):
            request = self._draw(number, "idempotent" if number % 2 else "sync")
            request.kind = f"after-{request.kind}"
            self._call(request)
            asked.append(request)
        return asked

    def _url(self) -> str:
        urls = self._urls()
        return urls[next(self._turn) % len(urls)]

    def _run(self) -> None:
        began = time.monotonic()
        kinds, weights = list(MIX), list(MIX.values())
        for number in itertools.count():
            if self._stop.wait(max(0.0, began + number / self._rate - time.monotonic())):
                return
            request = self._draw(number, self._rng.choices(kinds, weights)[0])
            self.requests.append(request)
            self._pool.submit(self._call, request)

    def _draw(self, number: int, kind: str) -> Request:
        city, location = f"city-{number}", f"loc-{self._rng.randrange(1000)}"
        request_id = f"soak-{number}"
        if kind == "repeat":
            earlier = [r for r in self.requests if r.kind == "idempotent"]
            if not earlier:
                kind = "idempotent"
            else:
                unanswered = [r for r in earlier if r.final is not None and r.final.status != 200]
                first = self._rng.choice(unanswered or earlier)
                return Request(number, kind, request_id, first.city, first.location, self._deadline, key=first.key)
        if kind == "idempotent":
            return Request(number, kind, request_id, city, location, self._deadline, key=f"key-{number}")
        if kind == "invalid":
            name, *_rest, status, error = self._rng.choice(INVALID)
            return Request(number, kind, request_id, city, location, self._deadline, invalid=name,
                           expected=(status, error))
        return Request(number, kind, request_id, city, location,
                       self._async_deadline if kind == "async" else self._deadline)

    def _call(self, request: Request) -> None:
        headers = {"X-Request-ID": request.request_id, "Connection": "close"}
        if request.invalid:
            _, extra, body, *_ = next(item for item in INVALID if item[0] == request.invalid)
            headers.update(extra)
        else:
            body = b'{"city": "%s", "location": "%s"}' % (request.city.encode(), request.location.encode())
            headers["Content-Type"] = "application/json"
        if request.key:
            headers["Idempotency-Key"] = request.key
        if request.kind == "async":
            headers["Prefer"] = "respond-async"
        # Retried only when the connection broke before any answer, while the deadline lasts.
        give_up = self._now() + request.deadline_seconds
        while True:
            attempt = self._send("POST", self._url() + PATH, headers, body, request.deadline_seconds + 5)
            request.attempts.append(attempt)
            if (attempt.status is not None or "ConnectionError" not in (attempt.error or "")
                    or self._now() > give_up or self._abandoned.is_set()):
                break
            time.sleep(0.2)
        if request.kind == "async" and attempt.status == 202 and isinstance(attempt.body, dict):
            request.async_id = attempt.body.get("id")
            self._poll(request)

    def _poll(self, request: Request) -> None:
        """Until the result is there (200, or the 504 of an entry not done by its deadline)
        or the deadline is well past; the last answer is recorded either way."""
        give_up = self._now() + self._async_deadline + 5
        poll = None
        while self._now() < give_up and not self._abandoned.wait(POLL_SECONDS):
            poll = self.read_result(request)
            # Not done yet (202), or its shard unreachable for now (503, Retry-After): ask again.
            if poll.status in (202, 503) or poll.status is None:
                continue
            request.polls.append(poll)
            return
        if poll is not None:
            request.polls.append(poll)  # still not done: the checker names it

    def read_result(self, request: Request) -> Attempt:
        return self._send("GET", f"{self._url()}/WeatherForecast/requests/{request.async_id}",
                          {"Connection": "close", "X-Request-ID": request.request_id}, None, 10)

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float) -> Attempt:
        sent = self._now()
        try:
            response = requests.request(method, url, headers=headers, data=body, timeout=timeout)
        except requests.RequestException as error:
            return Attempt(sent, self._now(), None, error=f"{type(error).__name__}: {error}")
        try:
            payload = response.json()
        except ValueError:
            payload = response.text[:200]
        return Attempt(sent, self._now(), response.status_code, payload, response.headers.get("Content-Type", ""))
