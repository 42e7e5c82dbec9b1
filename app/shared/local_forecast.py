"""The five-day sample forecast, answered locally without Redis (proxy and worker serve it)."""

from __future__ import annotations

import bisect
import random
from datetime import date, timedelta
from typing import Any

# The warmest temperature (°C) each summary describes; above the last one it is "Scorching".
# The summary follows from the temperature, so a forecast never reads "Freezing" at 19 °C.
SUMMARY_CEILINGS = (
    (-10, "Freezing"), (-3, "Bracing"), (5, "Chilly"), (12, "Cool"), (18, "Mild"),
    (24, "Warm"), (29, "Balmy"), (35, "Hot"), (42, "Sweltering"),
)
SUMMARIES = (*(name for _, name in SUMMARY_CEILINGS), "Scorching")


def summary_for(celsius: int) -> str:
    return SUMMARIES[bisect.bisect_left([ceiling for ceiling, _ in SUMMARY_CEILINGS], celsius)]


def five_day_forecast(today: date, rng: random.Random) -> list[dict[str, Any]]:
    days = []
    for offset in range(1, 6):
        celsius = rng.randint(-20, 54)
        days.append({
            "date": (today + timedelta(days=offset)).isoformat(),
            "temperatureC": celsius,
            "temperatureF": 32 + int(celsius / 0.5556),
            "summary": summary_for(celsius),
        })
    return days
