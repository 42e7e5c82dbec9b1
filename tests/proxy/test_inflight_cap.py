"""MAX_INFLIGHT_PER_PROCESS: past it, requests are refused at once with 503."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.load import fire

pytestmark = pytest.mark.system


def test_a_flood_past_the_cap_gets_fast_503s_and_the_proxy_recovers(stack):
    proxy = stack.proxy(WEB_CONCURRENCY="1", MAX_INFLIGHT_PER_PROCESS="5", REQUEST_TIMEOUT_SECONDS="3").wait_ready()

    # No worker: the first five wait for their deadline, the rest are refused at once.
    results = fire([proxy.url], count=25, concurrency=25, timeout=10)

    waited = [r for r in results if r.status == 504]
    refused = [r for r in results if r.status == 503]
    assert len(waited) == 5
    assert len(refused) == 20
    assert all(r.body["error"] == "overloaded" for r in refused)
    assert max(r.seconds for r in refused) < 1.0

    stack.worker("w", PROCESSING_DELAY_MS="0").wait_ready()
    assert proxy.ask("Oslo", "Norway").status_code == 200


def _slow_request(port: int, index: int, release: threading.Event) -> int:
    """Sends the headers and half the body, waits for ``release``, then the rest; returns the status."""
    body = json.dumps({"city": f"city-{index}", "location": "slow"}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as connection:
        connection.sendall(b"POST /WeatherForecast/city HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body[:10])
        release.wait(10)
        try:
            connection.sendall(body[10:])
        except OSError:  # refused before the body was read: the proxy may have closed already
            pass
        status_line = connection.makefile("rb").readline()
    return int(status_line.split()[1])


def test_the_cap_holds_while_bodies_are_still_arriving(stack):
    proxy = stack.proxy(WEB_CONCURRENCY="1", MAX_INFLIGHT_PER_PROCESS="5", REQUEST_TIMEOUT_SECONDS="2").wait_ready()
    release = threading.Event()

    with ThreadPoolExecutor(max_workers=12) as pool:
        futures = [pool.submit(_slow_request, proxy.port, i, release) for i in range(12)]
        time.sleep(1.0)  # every request is past its headers and reading its body
        release.set()
        statuses = Counter(future.result() for future in futures)

    # Places are taken before the body is read: reading it yields, and a check made then would
    # let all twelve in. No worker runs, so the admitted ones time out (504).
    assert statuses == {504: 5, 503: 7}
