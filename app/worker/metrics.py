"""The worker's Prometheus metrics (one process, the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TERMINALS_CONFIGURED = Gauge(
    "weather_worker_terminals_configured", "Terminals this worker runs (WORKER_TERMINALS)."
)
TERMINALS_ACTIVE = Gauge(
    "weather_worker_terminals_active", "Terminals processing an entry right now."
)
PROCESSED = Counter(
    "weather_worker_processed",
    "Request entries finished, by outcome: ok, expired (deadline passed, skipped), late (less time left "
    "than the work takes: answered as expired without the work), error (reply sent with an error), dead_lettered.",
    ["outcome"],
)
PROCESSING_SECONDS = Histogram(
    "weather_worker_processing_seconds",
    "Time from taking an entry to acknowledging it.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5, 10),
)
# Summed over the request stream shards (one stream unless REQUEST_STREAM_SHARDS > 1).
GROUP_LAG = Gauge(
    "weather_worker_group_lag_entries", "Entries in the request streams not yet delivered to the group."
)
GROUP_PENDING = Gauge(
    "weather_worker_group_pending_entries", "Entries delivered to the group and not yet acknowledged."
)
QUEUE_DEPTH = Gauge(
    "weather_worker_queue_depth_entries", "Group lag plus pending: requests waiting for or in work."
)
REQUEST_STREAM_LENGTH = Gauge(
    "weather_worker_request_stream_length_entries", "Entries kept in the request streams (XLEN)."
)
DEAD_LETTER_LENGTH = Gauge(
    "weather_worker_dead_letter_length_entries", "Entries in the dead-letter streams (XLEN)."
)
SHARD_LAG = Gauge(
    "weather_worker_shard_lag_entries", "Group lag of one request stream shard.", ["shard"]
)
SHARD_PENDING = Gauge(
    "weather_worker_shard_pending_entries", "Entries of one request stream shard pending in the group.", ["shard"]
)
SHARD_SETS_READ = Gauge(
    "weather_worker_shard_sets_read",
    "1 for each shard count whose streams this worker reads: its own REQUEST_STREAM_SHARDS and every count "
    "proxies announce, until that set is retired.",
    ["shards"],
)
SHARD_SETS_RETIRED = Counter(
    "weather_worker_shard_sets_retired", "Shard sets this worker stopped reading: unannounced and drained."
)

DRAIN_PER_SECOND = Gauge(
    "weather_worker_drain_per_second",
    "Entries a second this worker finishes when every terminal is busy (terminals / mean time an entry holds "
    "one), published for the proxies' admission; 0 until it has finished a few.",
)
EXPECTED_WORK_SECONDS = Gauge(
    "weather_worker_expected_work_seconds",
    "Median work time of this worker's recent entries: an entry with less time left is not started.",
)

LOOP_RESTARTS = Counter(
    "weather_worker_loop_restarts", "Background loops run again after they raised what nobody expected.", ["loop"]
)
CLAIMED = Counter(
    "weather_worker_claimed",
    "Entries taken over from a consumer that left them pending past CLAIM_IDLE_SECONDS (redeliveries).",
)
REPLIES_UNCONFIRMED = Counter(
    "weather_worker_replies_unconfirmed",
    "Replies (and their acknowledgements) written on the primary that fewer replicas than REDIS_WAIT_REPLICAS "
    "confirmed in time; not written again (a failover that loses one makes its entry pending again).",
)
LEASES_RENEWED = Counter(
    "weather_worker_leases_renewed",
    "Entries in work whose idle time this worker reset, so no other worker claims them (app.worker.leases).",
)
DEAD_LETTERED = Counter(
    "weather_worker_dead_lettered",
    "Entries moved to the dead-letter stream, by reason: poison (undecodable), max_deliveries, reply_failed "
    "(its reply stream refused the reply as it was written, e.g. a key of another type).",
    ["reason"],
)
CONSUMERS_REMOVED = Counter(
    "weather_worker_consumers_removed", "Gone consumers removed from the group (idle, nothing pending)."
)
REDIS_UP = Gauge(
    "weather_worker_redis_up", "1 when this worker's last Redis check (every 5 s) succeeded, else 0."
)
CIRCUIT_STATE = Gauge(
    "weather_worker_circuit_state", "Redis circuit breaker of this worker: 0 closed, 1 half-open, 2 open."
)

for _reason in ("poison", "max_deliveries", "reply_failed"):
    DEAD_LETTERED.labels(_reason)
# Created up front, so every outcome is exported from the start, and looked up here
# rather than through labels() on every entry.
PROCESSED_BY_OUTCOME = {outcome: PROCESSED.labels(outcome)
                        for outcome in ("ok", "expired", "late", "error", "dead_lettered")}
