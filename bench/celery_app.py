"""The peer of the benchmark: Celery with Redis as broker and result backend, doing the
same work (a mock forecast, no delay) as one round trip apply_async + get."""

import os
import random

from celery import Celery

from app.worker.forecast import build_forecast

redis_url = os.environ["BENCH_REDIS_URL"]
app = Celery("bench", broker=redis_url, backend=redis_url)
app.conf.update(task_ignore_result=False, result_expires=300, worker_prefetch_multiplier=4,
                broker_connection_retry_on_startup=True, task_acks_late=True)
_rng = random.Random()


@app.task(name="forecast")
def forecast(city: str, location: str, request_id: str) -> dict:
    return build_forecast(city, location, request_id, _rng)
