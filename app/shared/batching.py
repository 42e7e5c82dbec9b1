"""Coalescing the Redis writes of many concurrent callers into one pipeline per round trip.

Callers (greenlets of a gevent-patched process, or threads) submit one item each and
wait. One sender loop takes whatever has queued up and hands it to `send` as a batch:
N callers cost one round trip and one pool checkout instead of N. With one caller the
batch is just its item, so nothing waits for a batch to fill.

`send` answers per item (None or the item's own error), so one bad item does not fail
its neighbours; an exception from `send` itself fails the whole batch.
"""

from __future__ import annotations

import queue
import threading
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
        self._queue: queue.SimpleQueue[_Pending[Item]] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, item: Item, timeout: float | None = None) -> None:
        """Returns once the item's batch was sent; raises the item's error otherwise."""
        pending = _Pending(item)
        self._queue.put(pending)
        if self._sender is None:
            self._start()
        if not pending.done.wait(timeout):
            raise BatchTimeout(f"{self._name}: not sent within {timeout} s")
        if pending.error is not None:
            raise pending.error

    def _start(self) -> None:
        # Started on first use: after a fork (gunicorn workers), in the process that sends.
        with self._start_lock:
            if self._sender is None:
                self._sender = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._sender.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            outcomes: Sequence[BaseException | None]
            try:
                outcomes = self._send([pending.item for pending in batch])
            except Exception as error:  # every caller of the batch gets the error
                outcomes = [error] * len(batch)
            for pending, outcome in zip(batch, outcomes, strict=True):
                pending.error = outcome
                pending.done.set()
