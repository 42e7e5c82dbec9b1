"""The proxy's own metrics. Under gunicorn they live in PROMETHEUS_MULTIPROC_DIR, so
one scrape of /metrics sums every worker process."""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram

INFLIGHT = Gauge(
    "weather_proxy_inflight_requests",
    "Requests enqueued and waiting for their reply.",
    multiprocess_mode="livesum",
)
ROUNDTRIP_SECONDS = Histogram(
    "weather_proxy_roundtrip_seconds",
    "From enqueuing a request to receiving its reply, by result: ok, error, timeout.",
    ["result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5, 10, 30),
)
TIMEOUTS = Counter(
    "weather_proxy_timeouts", "Requests answered 504 because no reply came before the deadline."
)
LATE_REPLIES = Counter(
    "weather_proxy_late_replies", "Replies that arrived after their request had given up."
)
REDIS_ERRORS = Counter(
    "weather_proxy_redis_errors", "Redis operations of the request path that failed.", ["operation"]
)
LOOP_RESTARTS = Counter(
    "weather_proxy_loop_restarts", "Background loops run again after they raised what nobody expected.", ["loop"]
)
CIRCUIT_STATE = Gauge(
    "weather_proxy_circuit_state",
    "Redis circuit breaker, worst of this proxy's processes: 0 closed, 1 half-open, 2 open.",
    multiprocess_mode="livemax",
)
REDIS_UP = Gauge(
    "weather_proxy_redis_up",
    "1 while every reply listener of this proxy is connected to Redis, else 0.",
    multiprocess_mode="livemin",
)
OVERLOADED = Counter(
    "weather_proxy_overloaded", "Requests refused with 503 because the process held MAX_INFLIGHT_PER_PROCESS."
)
SHARDS_PAUSED = Gauge(
    "weather_proxy_shards_paused",
    "Request stream shards a proxy process skips because their last write failed (worst process).",
    multiprocess_mode="livemax",
)
SHARD_STATE = Gauge(
    "weather_proxy_shard_state",
    "1 for each request stream shard's state in the proxy processes (worst process): writable; paused (its last "
    "write failed; a trial follows); unconfirmed (its primary has fewer replicas online than REDIS_WAIT_REPLICAS).",
    ["shard", "state"],
    multiprocess_mode="livemax",
)
ENQUEUE_REROUTED = Counter(
    "weather_proxy_enqueue_rerouted", "Entries sent to another shard because their shard could not take them."
)
ENQUEUE_FATE_UNKNOWN = Counter(
    "weather_proxy_enqueue_fate_unknown",
    "Writes of entries whose outcome is unknown (the connection broke or timed out after sending). On a "
    "cluster the entry is sent again on another shard (its request may be processed twice); on one Redis "
    "the request is answered 503.",
)
ACCEPTED = Counter(
    "weather_proxy_async_accepted",
    "Async requests answered 202: queued with a result record to poll (Prefer: respond-async, or wait ran out).",
)
RESULTS_READ = Counter(
    "weather_proxy_async_results_read",
    "Polls of GET /WeatherForecast/requests/{id}, by what they found: done, pending, missing (unknown or expired).",
    ["found"],
)
IDEMPOTENT_REPEATS = Counter(
    "weather_proxy_idempotent_repeats",
    "Requests whose Idempotency-Key was seen before: answered with the first request's outcome, or refused.",
)
ADMISSION_ADMITTED = Counter(
    "weather_proxy_admitted",
    "Requests admission let into the queue, by urgency (RFC 9218 u=0..7; 3 when not given).",
    ["urgency"],
)
SHED = Counter(
    "weather_proxy_shed",
    "Requests refused with 503 over_capacity before they were queued, by reason (share: a caller beyond its share of "
    "the workers, whose surplus the others' leftover cannot serve in time; wait: the queue holds more than they "
    "may wait, its caller within its share; cold: no worker drain known and the backlog at "
    "ADMISSION_COLD_BACKLOG) and urgency.",
    ["reason", "urgency"],
)
EXPECTED_WAIT_SECONDS = Gauge(
    "weather_proxy_expected_wait_seconds",
    "Expected wait of a new request on the shallowest request stream shard (worst process).",
    multiprocess_mode="livemax",
)
DRAIN_PER_SECOND = Gauge(
    "weather_proxy_drain_per_second",
    "Entries a second the live workers drain together when busy, as their published figures say "
    "(0: none known; admission then allows ADMISSION_COLD_BACKLOG per shard).",
    multiprocess_mode="livemax",
)
SHARD_STATES = ("writable", "paused", "unconfirmed")


@functools.cache
def shard_states(shard: str) -> dict[str, Gauge]:
    """The shard's series, one per state, created together so that each is exported from the start."""
    return {state: SHARD_STATE.labels(shard, state) for state in SHARD_STATES}


# Created up front, so every series is exported from the start, and looked up here rather
# than through labels() on every request.
ADMITTED = {urgency: ADMISSION_ADMITTED.labels(str(urgency)) for urgency in range(8)}
SHED_BY = {(reason, urgency): SHED.labels(reason, str(urgency))
           for reason in ("wait", "share", "cold") for urgency in range(8)}
