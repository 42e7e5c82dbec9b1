"""Closed-loop Celery clients: N greenlets each doing apply_async + get for a while.

python -m bench.celery_client CONCURRENCY SECONDS -> prints {"sent", "ok", "seconds", ...} as JSON
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from bench.celery_app import forecast  # noqa: E402


def main(concurrency: int, seconds: float) -> None:
    latencies: list[float] = []
    failures = 0
    stop_at = time.perf_counter() + seconds

    def client(number: int) -> None:
        nonlocal failures
        index = 0
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                forecast.apply_async(args=(f"City-{number}-{index}", "bench", f"{number}-{index}")).get(timeout=30)
                latencies.append(time.perf_counter() - started)
            except Exception:
                failures += 1
            index += 1

    began = time.perf_counter()
    gevent.joinall([gevent.spawn(client, n) for n in range(concurrency)])
    elapsed = time.perf_counter() - began
    latencies.sort()
    print(json.dumps({
        "sent": len(latencies) + failures, "ok": len(latencies), "failed": failures, "seconds": round(elapsed, 3),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2) if latencies else None,
    }))


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))
