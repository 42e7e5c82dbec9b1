"""The worker's terminals as the readers and the terminal greenlets share them: how many
are idle, which entries are in hand, and the hand-over between the two."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable

from app.worker.delivery import Delivery


class Terminals:
    def __init__(self, count: int) -> None:
        self.count = count
        self._idle = threading.Semaphore(count)
        self._work: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        # Entries this worker holds right now. A stalled worker (GC pause, CPU starvation)
        # sees its own entries turn idle; claiming them must not start them a second time.
        self._in_hand: set[tuple[str, bytes]] = set()
        self._lock = threading.Lock()

    def take_one(self, timeout: float) -> bool:
        """An idle terminal for a read, waiting up to ``timeout`` for one."""
        return self._idle.acquire(timeout=timeout)

    def take_idle(self, most: int) -> int:
        """Every idle terminal there is right now, up to ``most``, without waiting."""
        taken = 0
        while taken < most and self._idle.acquire(blocking=False):
            taken += 1
        return taken

    def give_back(self, count: int) -> None:
        for _ in range(count):
            self._idle.release()

    def hand_over(self, deliveries: Iterable[Delivery]) -> None:
        """To the terminals taken for them."""
        for delivery in deliveries:
            with self._lock:
                self._in_hand.add(delivery.key)
            self._work.put(delivery)

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
        self._idle.release()

    def close(self) -> None:
        """Each terminal stops once it has finished what was handed to it."""
        for _ in range(self.count):
            self._work.put(None)
