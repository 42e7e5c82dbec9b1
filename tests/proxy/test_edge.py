"""The HTTP edge: every answer carries the caller's valid X-Request-ID, whatever produced it."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from tests.proxy.test_auth import SECRET

pytestmark = pytest.mark.system

CITY = "/WeatherForecast/city"


def _send(proxy, method: str, path: str, status: int, **kwargs) -> requests.Response:
    headers = {"X-Request-ID": f"edge-{status}", **kwargs.pop("headers", {})}
    return requests.request(method, proxy.url + path, headers=headers, timeout=15, **kwargs)


def test_every_refusal_of_the_api_carries_the_request_id(stack):
    # One process, one place, no worker: a held request makes the next one "overloaded".
    proxy = stack.proxy(WEB_CONCURRENCY="1", MAX_INFLIGHT_PER_PROCESS="1", REQUEST_TIMEOUT_SECONDS="3").wait_ready()
    answers = {
        400: _send(proxy, "POST", CITY, 400, data=b"{nope", headers={"Content-Type": "application/json"}),
        404: _send(proxy, "GET", "/nowhere", 404),
        405: _send(proxy, "GET", CITY, 405),
        413: _send(proxy, "POST", CITY, 413, data=b"x" * 70_000, headers={"Content-Type": "application/json"}),
        415: _send(proxy, "POST", CITY, 415, data=b"city=Oslo", headers={"Content-Type": "text/plain"}),
        422: _send(proxy, "POST", CITY, 422, json={"location": "Norway"}),
    }
    # The one place is taken as soon as a request's headers are in: hold it with half a body.
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as holder:
        holder.sendall(b"POST /WeatherForecast/city HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 100\r\n\r\n{")
        time.sleep(0.5)
        answers[503] = _send(proxy, "POST", CITY, 503, json={"city": "Bergen", "location": "Norway"})

    assert {status: answer.status_code for status, answer in answers.items()} == {s: s for s in answers}
    assert answers[503].json()["error"] == "overloaded"
    assert {status: answer.headers.get("X-Request-ID") for status, answer in answers.items()} == {
        status: f"edge-{status}" for status in answers}


def test_authentication_and_rate_limit_refusals_carry_it_too(stack):
    guarded = stack.proxy(AUTH_JWT_ENABLED="true", AUTH_JWT_SECRET=SECRET).wait_ready()
    limited = stack.proxy(RATE_LIMIT="1/minute").wait_ready()

    unauthorized = _send(guarded, "POST", CITY, 401, json={"city": "Oslo", "location": "Norway"})
    _send(limited, "GET", "/WeatherForecast", 200)
    too_many = _send(limited, "GET", "/WeatherForecast", 429)

    assert (unauthorized.status_code, unauthorized.headers.get("X-Request-ID")) == (401, "edge-401")
    assert (too_many.status_code, too_many.headers.get("X-Request-ID")) == (429, "edge-429")


def test_an_invalid_caller_id_is_replaced_on_refusals_as_on_answers(stack):
    proxy = stack.proxy().wait_ready()

    answer = requests.get(proxy.url + "/nowhere", headers={"X-Request-ID": "has space"}, timeout=5)

    assert answer.status_code == 404
    assert len(answer.headers["X-Request-ID"]) == 32
