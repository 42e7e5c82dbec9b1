"""The faults of a soak, drawn from its seed: the same seed, length and topology give the
same schedule (times, kinds, durations and which target), whatever happens while it runs.

Service faults may overlap anything; a Redis fault starts only once the previous one has
ended and the set has had ``REDIS_SETTLE_SECONDS`` to heal (a cluster losing a shard's
primary and its replica at once loses that shard: a different test)."""

from __future__ import annotations

import random
from dataclasses import dataclass

WORKER_KINDS = ("worker-kill", "worker-term", "worker-freeze")
PROXY_KINDS = ("proxy-kill", "proxy-term")
REDIS_KINDS = ("redis-kill", "redis-restart", "redis-partition", "redis-freeze", "slow-link")
KINDS = WORKER_KINDS + PROXY_KINDS + REDIS_KINDS
REDIS_SETTLE_SECONDS = 12.0
# No fault starts in the first seconds (every process warms up and is measured) nor late
# enough to still be under way when the load stops.
WARM_UP_SECONDS = 8.0
QUIET_TAIL_SECONDS = 15.0


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the load started
    kind: str
    # Which of the candidates (workers, proxies, Redis primaries) it hits: taken modulo
    # their number when it happens, since a failover changes which nodes are primaries.
    pick: int
    seconds: float  # how long it lasts (frozen, cut off, down) before it is undone

    @property
    def ends(self) -> float:
        return self.at + self.seconds

    @property
    def on_redis(self) -> bool:
        return self.kind in REDIS_KINDS


def _duration(kind: str, rng: random.Random, lease_seconds: float) -> float:
    if kind.endswith("freeze"):
        # Longer than the lease, so the entries in hand are claimed by another worker.
        return round(lease_seconds + rng.uniform(1.0, 3.0), 1)
    if kind in ("redis-partition", "slow-link"):
        return round(rng.uniform(6.0, 12.0), 1)
    if kind == "redis-kill":
        return round(rng.uniform(3.0, 8.0), 1)  # down before it is started again from its files
    if kind == "worker-kill":
        return round(rng.uniform(1.0, 4.0), 1)  # before the worker is started again
    return 0.0  # SIGTERMs: the process is restarted as soon as it has exited


def draw(seed: int, seconds: float, lease_seconds: float) -> list[Fault]:
    """Faults from WARM_UP_SECONDS on, a gap of about seconds/15 (6-20 s) between starts, the
    kinds taken from a shuffled bag so that every kind comes before any comes again."""
    rng = random.Random(seed)
    base_gap = max(6.0, min(20.0, seconds / 15))
    faults: list[Fault] = []
    bag: list[str] = []
    redis_free_at = 0.0
    at = WARM_UP_SECONDS
    while True:
        at += round(rng.uniform(0.5, 1.5) * base_gap, 1)
        if not bag:
            bag = list(KINDS)
            rng.shuffle(bag)
        kind = next((k for k in bag if k not in REDIS_KINDS or at >= redis_free_at), bag[0])
        if kind in REDIS_KINDS and at < redis_free_at:
            continue  # only Redis faults left in the bag and one still settling: the next gap
        fault = Fault(round(at, 1), kind, rng.randrange(1_000_000), _duration(kind, rng, lease_seconds))
        if fault.ends > seconds - QUIET_TAIL_SECONDS:
            return faults
        bag.remove(kind)
        faults.append(fault)
        if fault.on_redis:
            redis_free_at = fault.ends + REDIS_SETTLE_SECONDS
