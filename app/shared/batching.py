"""Coalescing the Redis writes of many concurrent callers into one pipeline per round trip.

Callers (greenlets of a gevent-patched process, or threads) submit one item each. While
no batch is in flight a caller sends the batch itself: it first yields once (``sleep(0)``:
no time passes, but under gevent every greenlet already runnable, such as the other
terminals a read just woke, runs and queues its item), then sends its item with whatever
queued. At everyday rates (one item at a time) that costs no hand-off to another greenlet
and no wake-up. While a batch is in flight callers queue and wait; when it is done, one
sender loop takes whatever has queued up and sends it as one batch, and goes on until the
queue is empty: N callers cost one round trip and one pool checkout instead of N. Nothing
ever waits for a batch to fill.

`send` answers per item (None or the item's own error), so one bad item does not fail
its neighbours; an exception from `send` itself fails the whole batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")

MAX_BATCH = 256


class BatchTimeout(TimeoutError):
    """The caller stopped waiting; its item may still be sent with a later batch."""


class _Pending(Generic[Item]):
    __slots__ = ("done", "error", "item")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.error: BaseException | None = None
        self.done = threading.Event()


class Batcher(Generic[Item]):
    def __init__(self, send: Callable[[list[Item]], Sequence[BaseException | None]], name: str,
                 max_batch: int = MAX_BATCH) -> None:
        self._send = send
        self._name = name
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._queued: deque[_Pending[Item]] = deque()
        # True while a batch is in flight: then callers queue for the sender loop.
        self._busy = False
        self._wake_sender = threading.Event()
        self._sender: threading.Thread | None = None

    def submit(self, item: Item, timeout: float | None = None) -> None:
        """Returns once the item was sent; raises the item's error otherwise. ``timeout``
        bounds the wait behind other callers' batch; a caller that sends its own item
        waits for its round trip (bounded by the connection's socket timeout)."""
        with self._lock:
            direct = not self._busy
            if direct:
                self._busy = True
            else:
                pending = _Pending(item)
                self._queued.append(pending)
        if direct:
            joined: list[_Pending[Item]] = []
            outcomes: Sequence[BaseException | None] = ()
            # Inside the try: a greenlet killed in its yield must still hand the batch on,
            # or every later caller would queue behind a batch nobody sends.
            try:
                time.sleep(0)
                with self._lock:
                    joined = [self._queued.popleft() for _ in range(min(self._max_batch - 1, len(self._queued)))]
                outcomes = self._outcomes([item, *(pending.item for pending in joined)])
            finally:
                self._done_sending()
                for number, pending in enumerate(joined, start=1):
                    # Interrupted (a greenlet killed): they were not sent by this caller.
                    pending.error = outcomes[number] if outcomes else BatchTimeout(f"{self._name}: interrupted")
                    pending.done.set()
            if outcomes[0] is not None:
                raise outcomes[0]
            return
        if not pending.done.wait(timeout):
            raise BatchTimeout(f"{self._name}: not sent within {timeout} s")
        if pending.error is not None:
            raise pending.error

    def _outcomes(self, items: list[Item]) -> Sequence[BaseException | None]:
        try:
            return self._send(items)
        except Exception as error:  # every caller of the batch gets the error
            return [error] * len(items)

    def _done_sending(self) -> None:
        """A batch is done: the sender loop takes over what queued meanwhile, if anything did."""
        with self._lock:
            if not self._queued:
                self._busy = False
                return
        if self._sender is None:
            # Started on first use: after a fork (gunicorn workers), in the process that sends.
            self._sender = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._sender.start()
        self._wake_sender.set()

    def _run(self) -> None:
        while True:
            self._wake_sender.wait()
            self._wake_sender.clear()
            while True:
                with self._lock:
                    if not self._queued:
                        self._busy = False
                        break
                    batch = [self._queued.popleft() for _ in range(min(self._max_batch, len(self._queued)))]
                for pending, outcome in zip(batch, self._outcomes([p.item for p in batch]), strict=True):
                    pending.error = outcome
                    pending.done.set()
