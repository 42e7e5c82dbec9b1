"""The work itself: a mock forecast, as the reference system builds it."""

from __future__ import annotations

import random
from typing import Any

from app.shared import contract

CONDITIONS = (
    "Sunny", "Partly Cloudy", "Cloudy", "Rainy", "Thunderstorm",
    "Snowy", "Foggy", "Windy", "Clear", "Stormy",
)


def build_forecast(city: str, location: str, request_id: str, rng: random.Random) -> dict[str, Any]:
    return {
        "city": city,
        "location": location,
        "forecastTime": contract.utc_timestamp(),
        "temperature": round(rng.uniform(-10, 40), 1),
        "condition": rng.choice(CONDITIONS),
        "humidity": rng.randint(30, 100),
        "windSpeed": round(rng.uniform(0, 30), 1),
        "requestId": request_id,
    }
