"""The five-day sample forecast, answered locally without Redis (proxy and worker serve it)."""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Any

SUMMARIES = (
    "Freezing", "Bracing", "Chilly", "Cool", "Mild",
    "Warm", "Balmy", "Hot", "Sweltering", "Scorching",
)


def five_day_forecast(today: date, rng: random.Random) -> list[dict[str, Any]]:
    days = []
    for offset in range(1, 6):
        celsius = rng.randint(-20, 54)
        days.append({
            "date": (today + timedelta(days=offset)).isoformat(),
            "temperatureC": celsius,
            "temperatureF": 32 + int(celsius / 0.5556),
            "summary": rng.choice(SUMMARIES),
        })
    return days
