"""Callers' shares of the workers, counted in a real Redis by several proxy processes."""

from __future__ import annotations

import pytest

from app.proxy.fairness import CallerShares
from app.shared.replication import ReplicaWait
from app.shared.routing import NodeWriter, NotSent
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


def _send(shares: CallerShares, caller: str, count: int, urgency: int = 3) -> int:
    """As admission does: each counted, then to the lane if within its share. How many were."""
    prompt = 0
    for _ in range(count):
        shares.offered(caller, urgency, synchronous=True)
        if shares.within_share(caller, urgency, DRAIN):
            shares.prompted(caller, urgency)
            prompt += 1
    return prompt


def _overloaded(shares: CallerShares) -> None:
    """Async work offered at 5x the drain (by a caller that is no share of the lane)."""
    for _ in range(100):
        shares.offered("ip:127.0.0.9", 3, synchronous=False)


def test_below_overload_every_synchronous_request_takes_the_lane(redis_server):
    shares = CallerShares("weather-requests", clock=Clock())
    assert _send(shares, NOISY, 30) == 30  # 1.5x the drain: a closed loop may offer that for a moment
    assert _send(shares, NOISY, 1) == 0  # beyond it, overload: shares apply


def test_under_overload_a_lone_caller_takes_the_lane_up_to_its_share_and_the_rest_goes_to_the_shard(
        redis_server):
    shares = CallerShares("weather-requests", clock=Clock())
    _overloaded(shares)
    assert _send(shares, NOISY, 30) == 18  # 0.9 of 20 a second


def test_a_caller_that_took_its_share_in_one_process_is_beyond_it_in_every_other(redis_server):
    writer, clock = _writer(redis_server), Clock()
    first, second = CallerShares("weather-requests", clock=clock), CallerShares("weather-requests", clock=clock)
    _overloaded(first)
    _send(first, NOISY, 30)
    _send(second, POLITE, 2)
    _send(second, OTHER, 1)
    second.offered(NOISY, 3, synchronous=True)  # the second process has seen it: it reads its count back
    _sync(writer, first, second, first)

    # Three callers: 6 a second each; the noisy one took 18 through the first process (9 to
    # 18 a second, as the counts span 1 to 2 s).
    assert _send(second, NOISY, 1) == 0
    assert _send(second, POLITE, 1) == 1
    # Every request offered counts, those that went to the shard too.
    assert 135 / 2 <= second.offered_per_second() <= 135


def test_a_lone_caller_has_the_whole_lane_and_shares_it_once_others_come(redis_server):
    writer, clock = _writer(redis_server), Clock()
    shares = CallerShares("weather-requests", clock=clock)
    _overloaded(shares)
    assert _send(shares, NOISY, 14) == 14
    _sync(writer, shares)
    _send(shares, OTHER, 1)
    _send(shares, POLITE, 1)
    _sync(writer, shares)
    assert _send(shares, NOISY, 1) == 0  # 14 taken (7 to 14 a second) of 6 (three callers)
    assert _send(shares, OTHER, 1) == 1


def test_urgency_orders_a_callers_own_requests_and_trust_lets_it_pass(redis_server):
    clock = Clock()
    shares = CallerShares("weather-requests", trusted=["sub:billing"], clock=clock)
    _overloaded(shares)
    _send(shares, POLITE, 1)
    # 6 urgent ones first: its default ones leave as many again for more urgent ones.
    assert _send(shares, NOISY, 6, urgency=0) == 6
    assert _send(shares, NOISY, 10) == 0  # 6 taken + 6 kept for the urgent >= 9
    assert _send(shares, NOISY, 10, urgency=1) == 3  # the urgent ones fill the share
    assert _send(shares, NOISY, 1, urgency=0) == 0  # and no more: u=0 never passes another's share
    # A trusted caller's urgent requests take the lane beyond its share, its others do not.
    assert _send(shares, "sub:billing", 30, urgency=0) == 30
    assert _send(shares, "sub:billing", 10) == 0


def test_async_requests_are_offered_load_but_never_a_share_of_the_lane(redis_server):
    writer, clock = _writer(redis_server), Clock()
    shares = CallerShares("weather-requests", clock=clock)
    for _ in range(100):
        shares.offered(NOISY, 3, synchronous=False)
    _sync(writer, shares)
    # The async caller is not a caller the lane is shared with: the polite one has it all.
    assert _send(shares, POLITE, 15) == 15 and shares.active_callers() == 1
    assert shares.offered_per_second() >= 115 / 2


def test_counts_slide_out_with_the_windows_and_unsynced_ones_are_dropped(redis_server):
    import time

    writer, clock = _writer(redis_server), Clock()
    shares = CallerShares("weather-requests", clock=clock)
    _overloaded(shares)
    _send(shares, OTHER, 1)
    _send(shares, POLITE, 1)
    assert _send(shares, NOISY, 30) == 6  # a third of 18
    time.sleep(1.05 - time.time() % 1)  # early in a second of Redis's (same host): no window ends in the sync
    _sync(writer, shares)
    # Its 6, read back, over the 1 to 2 s the counts span: less than another share (a
    # process that forgot them would give it 6 more).
    assert _send(shares, NOISY, 30) < 6
    # Windows are Redis's seconds: two of them later, the surge is gone from every count.
    time.sleep(2.1)
    clock.now += 2.1
    _sync(writer, shares)
    assert _send(shares, NOISY, 30) >= 6  # alone now, and no overload: the whole lane

    # Counted but never synced (Redis unreachable): dropped after two windows, never a latch.
    _overloaded(shares)
    assert _send(shares, NOISY, 1) == 0
    shares.sync_items()
    shares.absorb(NotSent("unreachable"), NotSent("unreachable"))
    clock.now += 2.5
    shares.sync_items()
    assert _send(shares, NOISY, 1) == 1


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
