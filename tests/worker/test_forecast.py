from __future__ import annotations

import random
from datetime import UTC, datetime

from app.worker.forecast import CONDITIONS, build_forecast


def test_forecast_fields_stay_in_their_ranges():
    rng = random.Random(7)
    for _ in range(2000):
        forecast = build_forecast("Oslo", "Norway", "abc", rng)
        assert -10 <= forecast["temperature"] <= 40
        assert 30 <= forecast["humidity"] <= 100
        assert 0 <= forecast["windSpeed"] <= 30
        assert forecast["condition"] in CONDITIONS
        assert (forecast["city"], forecast["location"], forecast["requestId"]) == ("Oslo", "Norway", "abc")
        stamp = datetime.fromisoformat(forecast["forecastTime"])
        assert abs((datetime.now(UTC) - stamp).total_seconds()) < 5


def test_snow_falls_only_at_or_below_two_degrees():
    rng = random.Random(11)
    forecasts = [build_forecast("Oslo", "Norway", "abc", rng) for _ in range(3000)]
    snowy = [f["temperature"] for f in forecasts if f["condition"] == "Snowy"]

    assert snowy, "no snow in 3000 forecasts: the check below would prove nothing"
    assert max(snowy) <= 2.0
