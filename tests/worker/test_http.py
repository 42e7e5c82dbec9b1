"""The worker's HTTP port: probes, metrics, and the seed worker's own forecast and status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests

pytestmark = pytest.mark.system


def test_five_local_forecasts_and_the_status_are_served(stack):
    worker = stack.worker("w1").wait_ready()

    days = requests.get(worker.url + "/WeatherForecast", timeout=5)
    status = requests.get(worker.url + "/WeatherForecast/status", timeout=5)

    assert days.status_code == 200
    assert [set(day) for day in days.json()] == [{"date", "temperatureC", "temperatureF", "summary"}] * 5
    assert status.status_code == 200
    body = status.json()
    assert (body["status"], body["service"], body["consumer"]) == ("Running", "worker", "w1")
    reported = datetime.fromisoformat(body["time"].replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - reported) < timedelta(seconds=5)


def test_an_unknown_path_is_a_json_404(stack):
    worker = stack.worker("w1").wait_ready()

    response = requests.get(worker.url + "/WeatherForecast/nope", timeout=5)

    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
