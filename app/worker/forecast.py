"""The work itself: a mock forecast, as the reference system builds it."""

from __future__ import annotations

import random
from typing import Any

from app.shared import contract

CONDITIONS = (
    "Sunny", "Partly Cloudy", "Cloudy", "Rainy", "Thunderstorm",
    "Snowy", "Foggy", "Windy", "Clear", "Stormy",
)


# Snow only where it can fall: the condition must agree with the temperature beside it.
SNOW_CEILING_C = 2.0


def build_forecast(city: str, location: str, request_id: str, rng: random.Random) -> dict[str, Any]:
    temperature = round(rng.uniform(-10, 40), 1)
    conditions = CONDITIONS if temperature <= SNOW_CEILING_C else tuple(c for c in CONDITIONS if c != "Snowy")
    return {
        "city": city,
        "location": location,
        "forecastTime": contract.utc_timestamp(),
        "temperature": temperature,
        "condition": rng.choice(conditions),
        "humidity": rng.randint(30, 100),
        "windSpeed": round(rng.uniform(0, 30), 1),
        "requestId": request_id,
    }
