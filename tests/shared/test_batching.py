"""The batcher behind the proxy's enqueue and the worker's replies, with real threads."""

from __future__ import annotations

import threading
import time

import pytest

from app.shared.batching import Batcher, BatchTimeout


def test_concurrent_submits_share_batches_and_each_gets_its_own_outcome():
    batches: list[list[int]] = []
    release = threading.Event()

    def send(items: list[int]) -> list[BaseException | None]:
        release.wait(5)  # the first batch is in flight while the others queue up behind it
        batches.append(items)
        return [ValueError(item) if item % 2 else None for item in items]

    batcher: Batcher[int] = Batcher(send, "test")
    outcomes: dict[int, str] = {}

    def submit(item: int) -> None:
        try:
            batcher.submit(item, timeout=10)
            outcomes[item] = "sent"
        except ValueError as error:
            outcomes[item] = f"error {error}"

    threads = [threading.Thread(target=submit, args=(item,)) for item in range(20)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(10)

    assert sorted(item for batch in batches for item in batch) == list(range(20))
    assert len(batches) < 20
    assert outcomes == {item: f"error {item}" if item % 2 else "sent" for item in range(20)}


def test_an_exception_from_send_fails_every_item_of_the_batch():
    def send(items: list[str]) -> list[BaseException | None]:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError, match="down"):
        Batcher(send, "test").submit("a", timeout=5)


def test_a_caller_queued_behind_a_batch_in_flight_that_stops_waiting_gets_a_timeout():
    never = threading.Event()
    batcher: Batcher[str] = Batcher(lambda items: [None] * len(items) if never.wait(5) else [], "test")
    first = threading.Thread(target=batcher.submit, args=("first",))
    first.start()  # sends its own item, and hangs in it
    time.sleep(0.05)

    with pytest.raises(BatchTimeout):
        batcher.submit("second", timeout=0.05)
    never.set()
    first.join(5)


def test_a_caller_alone_sends_its_own_item_in_its_own_thread():
    senders: list[str] = []
    batcher: Batcher[str] = Batcher(lambda items: senders.append(threading.current_thread().name) or [None], "test")

    batcher.submit("a", timeout=5)
    batcher.submit("b", timeout=5)

    assert senders == [threading.current_thread().name] * 2


def test_a_caller_interrupted_in_its_yield_leaves_the_batcher_usable(monkeypatch):
    """A greenlet killed (GreenletExit, a BaseException) while it yields before sending."""
    sent: list[str] = []
    batcher: Batcher[str] = Batcher(lambda items: sent.extend(items) or [None] * len(items), "test")

    def killed(seconds: float) -> None:
        raise KeyboardInterrupt  # a BaseException, like GreenletExit

    monkeypatch.setattr("app.shared.batching.time.sleep", killed)
    with pytest.raises(KeyboardInterrupt):
        batcher.submit("killed", timeout=1)
    monkeypatch.undo()

    batcher.submit("next", timeout=1)  # without the fix: queued behind a batch nobody sends
    assert sent == ["next"]
