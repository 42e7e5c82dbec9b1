"""The worker's terminals as the readers and the terminal greenlets share them: how many
are idle, which entries are in hand, and the hand-over between the two."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence

from app.worker.delivery import Delivery


class Terminals:
    def __init__(self, count: int) -> None:
        self.count = count
        # A count under a condition, not a semaphore: a reader takes every idle terminal at
        # once, in one step rather than one acquire per terminal.
        self._idle = count
        self._idle_changed = threading.Condition(threading.Lock())
        self._work: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        # Entries this worker holds right now. A stalled worker (GC pause, CPU starvation)
        # sees its own entries turn idle; claiming them must not start them a second time.
        self._in_hand: set[tuple[str, bytes]] = set()
        self._lock = threading.Lock()

    def take_one(self, timeout: float) -> bool:
        """An idle terminal for a read, waiting up to ``timeout`` for one."""
        with self._idle_changed:
            if not self._idle and not self._idle_changed.wait_for(lambda: self._idle > 0, timeout):
                return False
            self._idle -= 1
            return True

    def take_idle(self, most: int) -> int:
        """Every idle terminal there is right now, up to ``most``, without waiting."""
        with self._idle_changed:
            taken = min(most, self._idle)
            self._idle -= taken
            return taken

    def give_back(self, count: int) -> None:
        if count > 0:
            with self._idle_changed:
                self._idle += count
                self._idle_changed.notify(count)

    def hand_over(self, deliveries: Sequence[Delivery]) -> None:
        """To the terminals taken for them."""
        self.hold(deliveries)
        for delivery in deliveries:
            self._work.put(delivery)

    def hold(self, deliveries: Sequence[Delivery]) -> None:
        """Entries this worker has taken from Redis, in hand from then on (their leases renewed,
        never claimed by this worker's own readers) whether a terminal has them yet or not."""
        with self._lock:
            self._in_hand.update(delivery.key for delivery in deliveries)

    def let_go(self, deliveries: Sequence[Delivery]) -> None:
        """Entries held that no terminal will take (the worker stops): pending in the group,
        another worker claims them once idle."""
        with self._lock:
            self._in_hand.difference_update(delivery.key for delivery in deliveries)

    def holds(self, stream: str, entry_id: bytes) -> bool:
        with self._lock:
            return (stream, entry_id) in self._in_hand

    def in_hand(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self._in_hand)

    def next_delivery(self) -> Delivery | None:
        """What a terminal works on next; None tells it to stop."""
        return self._work.get()

    def finished(self, delivery: Delivery) -> None:
        with self._lock:
            self._in_hand.discard(delivery.key)
        self.give_back(1)

    def close(self) -> None:
        """Each terminal stops once it has finished what was handed to it."""
        for _ in range(self.count):
            self._work.put(None)
