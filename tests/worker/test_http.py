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


def test_readiness_names_a_background_loop_that_cannot_run():
    """A loop that fails again and again (app.shared.loops) takes the worker out of service
    rather than leave it running on what that loop no longer does."""
    import json
    import threading
    from types import SimpleNamespace

    from app.shared.loops import Loops
    from app.worker.health import HealthApp
    from tests.support.processes import wait_until

    mended = threading.Event()

    def broken() -> None:
        if not mended.is_set():
            raise RuntimeError("cannot run")

    loops = Loops(first_restart_seconds=0.001)
    worker = SimpleNamespace(stopping=False, guard=SimpleNamespace(probe=lambda: True), groups_ready=True,
                             loops=loops, last_loop_monotonic=0.0)
    health = HealthApp(worker, lambda: None, 100, None)  # type: ignore[arg-type]

    def ready() -> tuple[str, dict]:
        answer: list[str] = []
        body = b"".join(health({"PATH_INFO": "/readyz"}, lambda status, headers: answer.append(status)))
        return answer[0], json.loads(body)

    assert ready() == ("200 OK", {"status": "ready"})
    loops.start("leases", broken)
    wait_until(lambda: ready()[0] != "200 OK", 5, what="not ready")
    try:
        assert ready() == ("503 Service Unavailable", {"status": "loop_failing", "loops": ["leases"]})
    finally:
        mended.set()  # its next run returns: no thread left behind
