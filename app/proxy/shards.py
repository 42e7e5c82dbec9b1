"""Which request stream shards can take an entry now, in one proxy process.

A shard is a queue, not a key's home: any shard that takes the write can carry any
request. So a shard whose write failed (its node is down, refused the command, or its
replicas did not confirm it) is skipped for a pause that doubles with each failure up
to a cap, and the requests go to the others meanwhile. When the pause is over, one
request is the trial: its success makes the shard healthy again, a failure pauses it
longer. Only when no shard can take a request is it refused.

With REDIS_WAIT_REPLICAS a shard whose primary cannot confirm a write (fewer replicas
online than asked: app.proxy.replicas) is skipped until it can, not for a pause: a trial
there would cost a WAIT timeout each time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence

from app.proxy import metrics

FIRST_PAUSE_SECONDS = 0.1
# A shard's node comes back (or its replica is promoted) within seconds; a cap this
# short finds it within a second of that, at the cost of one trial per second.
MAX_PAUSE_SECONDS = 1.0


class ShardHealth:
    def __init__(self, streams: Sequence[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.streams = list(streams)
        self._clock = clock
        self._paused_until = dict.fromkeys(self.streams, 0.0)
        self._failures = dict.fromkeys(self.streams, 0)
        self._unconfirmed: set[str] = set()
        self._next = 0
        metrics.SHARDS_PAUSED.set(0)
        for stream in self.streams:
            self._report_state(stream)

    def pick(self, avoid: Collection[str] = ()) -> str | None:
        """The next shard in turn that may be written now, or None when every one is paused."""
        now = self._clock()
        count = len(self.streams)
        for _ in range(count):
            stream = self.streams[self._next]
            self._next = (self._next + 1) % count
            if stream in avoid or stream in self._unconfirmed or self._paused_until[stream] > now:
                continue
            if self._failures[stream]:
                # This request is the trial: the others keep away until it is answered.
                self._paused_until[stream] = now + self._pause(stream)
            return stream
        return None

    def soonest_free(self) -> str | None:
        """Every shard is paused and a request will not wait longer: the one whose pause ends first
        (its trial: others keep away until it is answered); None when none can confirm a write."""
        candidates = [stream for stream in self.streams if stream not in self._unconfirmed]
        if not candidates:
            return None
        stream = min(candidates, key=self._paused_until.__getitem__)
        self._paused_until[stream] = self._clock() + self._pause(stream)
        return stream

    def failed(self, stream: str) -> None:
        self._failures[stream] += 1
        self._paused_until[stream] = self._clock() + self._pause(stream)
        if self._failures[stream] == 1:  # its state changes with the first failure only
            self._report(stream)

    def succeeded(self, stream: str) -> None:
        if self._failures[stream]:
            self._failures[stream] = 0
            self._paused_until[stream] = 0.0
            self._report(stream)

    def can_confirm(self, stream: str, able: bool) -> None:
        """What the shard's primary says of its replicas (app.proxy.replicas), or a WAIT that fell short."""
        if able == (stream not in self._unconfirmed):
            return
        if able:
            self._unconfirmed.discard(stream)
        else:
            self._unconfirmed.add(stream)
        self._report_state(stream)

    def cannot_take(self, stream: str) -> str | None:
        """Why an entry that must go to this shard (an Idempotency-Key's) is refused now, or None."""
        if stream in self._unconfirmed:
            return "replicas"
        if self._failures[stream] and self._paused_until[stream] > self._clock():
            return "paused"
        return None

    @property
    def none_can_confirm(self) -> bool:
        return len(self._unconfirmed) == len(self.streams)

    def seconds_until_free(self, stream: str) -> float:
        return max(0.0, self._paused_until[stream] - self._clock())

    def seconds_until_one_is_free(self) -> float:
        return max(0.0, min(self._paused_until.values()) - self._clock())

    @property
    def paused(self) -> list[str]:
        return [stream for stream in self.streams if self._failures[stream]]

    def _pause(self, stream: str) -> float:
        return float(min(MAX_PAUSE_SECONDS, FIRST_PAUSE_SECONDS * 2 ** max(0, self._failures[stream] - 1)))

    def state(self, stream: str) -> str:
        if stream in self._unconfirmed:
            return "unconfirmed"
        return "paused" if self._failures[stream] else "writable"

    def _report(self, stream: str) -> None:
        metrics.SHARDS_PAUSED.set(len(self.paused))
        self._report_state(stream)

    def _report_state(self, stream: str) -> None:
        current = self.state(stream)
        for state, gauge in metrics.shard_states(stream).items():
            gauge.set(1 if state == current else 0)
