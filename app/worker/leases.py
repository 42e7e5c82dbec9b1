"""Keeping the entries this worker is working on its own, however long the work takes.

An entry pending longer than CLAIM_IDLE_SECONDS is taken over by another worker: that is
how a dead worker's entries are finished. Work longer than that would be taken from a
live worker too and done twice. Every LEASE_RENEW_SECONDS this loop resets the idle time
of the entries in hand, one script per shard per round (not per entry), and only of the
entries the group still says are this consumer's: a blind XCLAIM would take back an
entry another worker claimed while this one stalled. A worker that dies renews nothing,
so its entries are claimed after CLAIM_IDLE_SECONDS as before.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import redis

from app.shared.connections import RedisClient
from app.shared.resilience import RedisGuard
from app.worker import metrics
from app.worker.terminals import Terminals

log = logging.getLogger("app.worker")

# XCLAIM with min-idle 0 and JUSTID resets the idle time without counting a delivery.
_RENEW = """
local renewed = 0
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
"""


class LeaseKeeper:
    def __init__(self, client: RedisClient, guard: RedisGuard, terminals: Terminals, *, group: str,
                 consumer: str, renew_seconds: float) -> None:
        self._script = client.register_script(_RENEW)
        self._guard = guard
        self._terminals = terminals
        self._group = group
        self._consumer = consumer
        self._renew_seconds = renew_seconds

    def run(self) -> None:
        # Not stopped with the readers: a stopping worker still finishes what it holds
        # (SHUTDOWN_GRACE_SECONDS) and keeps it its own until the process ends.
        while True:
            time.sleep(self._renew_seconds)
            self.renew()

    def renew(self) -> int:
        """Entries renewed this round; a shard that fails is tried again next round."""
        by_stream: dict[str, list[bytes]] = defaultdict(list)
        for stream, entry_id in self._terminals.in_hand():
            by_stream[stream].append(entry_id)
        renewed = 0
        for stream, entry_ids in by_stream.items():
            try:
                renewed += int(self._guard.call_once(self._script, keys=[stream],
                                                     args=[self._group, self._consumer, *entry_ids]))
            except redis.RedisError as error:
                log.warning("could not renew the entries in hand", extra={"stream": stream, "error": repr(error)})
        if renewed:
            metrics.LEASES_RENEWED.inc(renewed)
        return renewed
