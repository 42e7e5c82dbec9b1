"""The proxy's HTTP contract: answers, errors and probes."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.system

CITY_PATH = "/WeatherForecast/city"


@pytest.fixture
def proxy(stack):
    return stack.proxy(REQUEST_TIMEOUT_SECONDS="5").wait_ready()


def test_local_forecast_needs_no_worker(proxy):
    response = requests.get(proxy.url + "/WeatherForecast", timeout=5)

    assert response.status_code == 200
    days = response.json()
    assert len(days) == 5
    for day in days:
        assert set(day) == {"date", "temperatureC", "temperatureF", "summary"}
        assert day["temperatureF"] == 32 + int(day["temperatureC"] / 0.5556)


def test_probes(proxy):
    assert requests.get(proxy.url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(proxy.url + "/readyz", timeout=5).json() == {"status": "ready"}


def test_the_seed_health_answer_is_readiness_in_its_words(proxy):
    response = requests.get(proxy.url + "/WeatherForecast/health", timeout=5)

    assert response.status_code == 200
    assert {k: v for k, v in response.json().items() if k != "time"} == {"status": "Healthy", "service": "proxy"}


def test_readiness_fails_when_redis_is_gone(stack, proxy):
    stack.redis.stop()

    response = requests.get(proxy.url + "/readyz", timeout=5)
    health = requests.get(proxy.url + "/WeatherForecast/health", timeout=5)

    assert response.status_code == 503
    assert response.json()["status"] == "redis_unavailable"
    assert (health.status_code, health.json()["status"], health.json()["detail"]) == (
        503, "Unhealthy", "redis_unavailable")
    assert requests.get(proxy.url + "/healthz", timeout=5).status_code == 200


def _post(proxy, data: bytes | None = None, content_type: str | None = "application/json", **kwargs):
    headers = {"Content-Type": content_type} if content_type else {}
    return requests.post(proxy.url + CITY_PATH, data=data, headers=headers, timeout=10, **kwargs)


BAD_BODIES = [
    pytest.param(b"{not json", 400, "malformed_json", id="malformed-json"),
    pytest.param(b"", 400, "malformed_json", id="empty-body"),
    pytest.param(b'["Oslo", "Norway"]', 422, "validation_error", id="array-body"),
    pytest.param(b'"Oslo"', 422, "validation_error", id="string-body"),
    pytest.param(b'{"location": "Norway"}', 422, "validation_error", id="missing-city"),
    pytest.param(b'{"city": "Oslo"}', 422, "validation_error", id="missing-location"),
    pytest.param(b'{"city": "", "location": "Norway"}', 422, "validation_error", id="empty-city"),
    pytest.param(b'{"city": "   ", "location": "Norway"}', 422, "validation_error", id="blank-city"),
    pytest.param(b'{"city": 42, "location": "Norway"}', 422, "validation_error", id="number-city"),
    pytest.param(b'{"city": "Oslo", "location": null}', 422, "validation_error", id="null-location"),
    pytest.param(b'{"city": "Oslo", "location": ["N"]}', 422, "validation_error", id="list-location"),
    pytest.param(b'{"city": "' + b"x" * 201 + b'", "location": "N"}', 422, "validation_error", id="long-city"),
]


@pytest.mark.parametrize(("body", "status", "error"), BAD_BODIES)
def test_bad_bodies_get_a_json_error(proxy, body, status, error):
    response = _post(proxy, body)

    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == status
    assert response.json()["type"] == "urn:redis-stream-demo:problem:" + error
    assert response.json()["title"]
    assert response.json()["error"] == error
    assert response.json()["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_non_json_content_type_is_415(proxy, content_type):
    response = _post(proxy, b'{"city": "Oslo", "location": "Norway"}', content_type=content_type)

    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"


def test_body_over_64_kib_is_413(proxy):
    body = b'{"city": "Oslo", "location": "' + b"x" * (64 * 1024) + b'"}'

    response = _post(proxy, body)

    assert response.status_code == 413
    assert response.json()["error"] == "request_entity_too_large"


def test_chunked_body_over_64_kib_is_413(proxy):
    def chunks():
        yield b'{"city": "Oslo", "location": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    response = _post(proxy, chunks())

    assert response.status_code == 413
    assert response.json()["error"] == "request_entity_too_large"


def test_wrong_method_and_unknown_path_are_json(proxy):
    wrong_method = requests.get(proxy.url + CITY_PATH, timeout=5)
    unknown = requests.get(proxy.url + "/nope", timeout=5)

    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"]
    assert wrong_method.json()["error"] == "method_not_allowed"
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found"


def test_bad_input_never_reaches_the_stream(stack, proxy):
    for param in BAD_BODIES:
        _post(proxy, param.values[0])

    assert stack.redis.client().exists("weather-requests") == 0
