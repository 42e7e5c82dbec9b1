from __future__ import annotations

import random
from datetime import date
from itertools import pairwise

from app.shared.local_forecast import SUMMARIES, five_day_forecast, summary_for


def test_the_summary_follows_the_temperature():
    rng = random.Random(3)
    days = [day for _ in range(400) for day in five_day_forecast(date(2026, 12, 1), rng)]
    by_summary: dict[str, list[int]] = {}
    for day in days:
        by_summary.setdefault(day["summary"], []).append(day["temperatureC"])

    assert set(by_summary) == set(SUMMARIES), "every summary should occur over -20..54 °C"
    ranges = [(min(by_summary[name]), max(by_summary[name])) for name in SUMMARIES]
    # Each summary's temperatures lie wholly above the previous summary's: colder words, colder days.
    assert all(previous[1] < current[0] for previous, current in pairwise(ranges))


def test_the_reported_cases():
    assert summary_for(19) not in ("Freezing", "Bracing", "Chilly")
    assert summary_for(-13) == "Freezing"
    assert summary_for(54) == "Scorching"
