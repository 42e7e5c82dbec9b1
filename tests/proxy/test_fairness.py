"""Callers' shares of the workers, counted in a real Redis by several proxy processes."""

from __future__ import annotations

import pytest

from app.proxy.fairness import CallerShares
from app.shared.replication import ReplicaWait
from app.shared.routing import NodeWriter
from app.shared.settings import CommonSettings

pytestmark = pytest.mark.system

NOISY, POLITE, OTHER = "ip:127.0.0.2", "ip:127.0.0.3", "ip:127.0.0.4"
DRAIN = 20.0  # entries a second: 18 a second of prompt lane in all


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _writer(redis_server) -> NodeWriter:
    topology = CommonSettings(redis_url=redis_server.url).topology
    return NodeWriter(topology, topology.client(client_name="test-fairness"), ReplicaWait(0, 0))


def _sync(writer: NodeWriter, *processes: CallerShares) -> None:
    for shares in processes:
        items = shares.sync_items()
        shares.absorb(*writer.execute(items))


def _offer(shares: CallerShares, caller: str, count: int, urgency: int = 3, synchronous: bool = True) -> None:
    for _ in range(count):
        shares.offered(caller, urgency, synchronous=synchronous)


def test_a_caller_beyond_its_share_in_one_process_is_beyond_it_in_every_other(redis_server):
    writer, clock = _writer(redis_server), Clock()
    first, second = CallerShares("weather-requests", clock=clock), CallerShares("weather-requests", clock=clock)
    _offer(first, NOISY, 30)
    _offer(second, POLITE, 2)
    second.offered(NOISY, 3, synchronous=True)  # the second process has seen it once
    _sync(writer, first, second, first)

    # Two callers: 9 a second each. The noisy one sent 31 through both processes.
    assert not second.within_share(NOISY, 3, DRAIN)
    assert second.within_share(POLITE, 3, DRAIN)
    assert first.offered_per_second() == pytest.approx(33)


def test_a_lone_caller_has_the_whole_lane_and_shares_it_once_another_comes(redis_server):
    writer, clock = _writer(redis_server), Clock()
    shares = CallerShares("weather-requests", clock=clock)
    _offer(shares, NOISY, 15)
    _sync(writer, shares)
    assert shares.within_share(NOISY, 3, DRAIN)  # 15 of 18

    _offer(shares, OTHER, 1)
    _sync(writer, shares)
    assert not shares.within_share(NOISY, 3, DRAIN)  # 15 of 9
    assert shares.within_share(OTHER, 3, DRAIN)


def test_urgency_orders_a_callers_own_requests_and_trust_lets_it_pass(redis_server):
    writer, clock = _writer(redis_server), Clock()
    shares = CallerShares("weather-requests", trusted=["sub:billing"], clock=clock)
    _offer(shares, NOISY, 30)  # beyond its share at its default urgency
    _offer(shares, POLITE, 1)
    _offer(shares, "sub:billing", 30, urgency=0)
    _sync(writer, shares)

    # Its urgent ones have their own count: the lane, up to its share of them.
    assert shares.within_share(NOISY, 1, DRAIN)
    assert not shares.within_share(NOISY, 3, DRAIN)
    assert shares.within_share(POLITE, 5, DRAIN)
    _offer(shares, NOISY, 10, urgency=0)
    assert not shares.within_share(NOISY, 0, DRAIN)
    # A trusted caller's urgent requests take the lane beyond its share, its others do not.
    assert shares.within_share("sub:billing", 0, DRAIN)
    _offer(shares, "sub:billing", 10)
    assert not shares.within_share("sub:billing", 3, DRAIN)


def test_async_requests_are_offered_load_but_never_a_share_of_the_lane(redis_server):
    writer, clock = _writer(redis_server), Clock()
    shares = CallerShares("weather-requests", clock=clock)
    _offer(shares, NOISY, 100, synchronous=False)
    _offer(shares, POLITE, 5)
    _sync(writer, shares)
    # The async caller is not a caller the lane is shared with: the polite one has it all.
    assert shares.within_share(POLITE, 3, DRAIN) and shares._active_callers() == 1
    assert shares.offered_per_second() == pytest.approx(105)


def test_counts_slide_out_with_the_windows_and_unsynced_ones_are_dropped(redis_server):
    writer, clock = _writer(redis_server), Clock()
    shares = CallerShares("weather-requests", clock=clock)
    _offer(shares, NOISY, 30)
    _sync(writer, shares)
    assert not shares.within_share(NOISY, 3, DRAIN)
    # Windows are Redis's seconds: two of them later, the surge is gone from every count.
    import time

    time.sleep(2.1)
    clock.now += 2.1
    _sync(writer, shares)
    assert shares.within_share(NOISY, 3, DRAIN)

    # Counted but never synced (Redis unreachable): dropped after two windows, never a latch.
    _offer(shares, NOISY, 30)
    assert not shares.within_share(NOISY, 3, DRAIN)
    clock.now += 2.5
    shares.sync_items()  # its answer never comes
    assert shares.within_share(NOISY, 3, DRAIN)


def _load(proxy, source: str, rate: float, seconds: float, **headers: str):
    import asyncio

    from tools.load_runs import run_open_loop

    asynchronous = headers.pop("asynchronous", "") == "yes"
    urgency = int(headers.pop("urgency", "-1"))
    return asyncio.run(run_open_loop(proxy.url, rate=rate, count=None, timeout=15, duration=seconds,
                                     source=source, asynchronous=asynchronous,
                                     urgency=lambda index: urgency if urgency >= 0 else None))


@pytest.mark.parametrize("noisy", ["plain", "urgent", "async"])
def test_a_polite_caller_is_served_whatever_a_noisy_one_sends(stack, noisy):
    """One worker (about 16.7 a second); a polite caller at 5 a second, a noisy one at 40 a
    second, plain, all Priority u=0, or all Prefer: respond-async. Before callers had shares,
    the polite caller got 0 of 125 answered against the last two."""
    import concurrent.futures

    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="10").wait_ready()
    stack.worker("w", WORKER_TERMINALS="5", PROCESSING_DELAY_MS="100-500").wait_ready()
    _load(proxy, "127.0.0.3", 5, 2)  # the drain is learned
    extra = {"plain": {}, "urgent": {"urgency": "0"}, "async": {"asynchronous": "yes"}}[noisy]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        noisy_run = pool.submit(_load, proxy, "127.0.0.2", 40, 15, **extra)
        polite_run = pool.submit(_load, proxy, "127.0.0.3", 5, 15)
        polite, surge = polite_run.result(), noisy_run.result()

    statuses = [sample.status for sample in polite.samples]
    assert statuses.count(200) == len(statuses), statuses
    # The noisy caller had the rest (about 11.7 a second), refused what it could not serve.
    served = sum(sample.status in (200, 202) for sample in surge.samples)
    if noisy == "async":
        assert served > 0
    else:
        assert any(sample.status == 503 for sample in surge.samples)
        assert served >= 0.5 * 15 * (16.7 - 5), served
