"""Callers' shares of the workers, counted in a real Redis by several proxy processes."""

from __future__ import annotations

import pytest

from app.proxy.fairness import CallerShares
from app.shared.replication import ReplicaWait
from app.shared.routing import NodeWriter, NotSent
from app.shared.settings import CommonSettings
from tests.support.clocks import ManualClock

pytestmark = pytest.mark.system

NOISY, POLITE, OTHER = "ip:127.0.0.2", "ip:127.0.0.3", "ip:127.0.0.4"
DRAIN = 20.0  # entries a second: 18 a second of prompt lane in all



def _writer(redis_server) -> NodeWriter:
    topology = CommonSettings(redis_url=redis_server.url).topology
    return NodeWriter(topology, topology.client(client_name="test-fairness"), ReplicaWait(0, 0))


def _sync(writer: NodeWriter, *processes: CallerShares) -> None:
    for shares in processes:
        items = shares.sync_items()
        shares.absorb(*writer.execute(items))


def _send(shares: CallerShares, caller: str, count: int, urgency: int = 3, lane_queued: bool = False) -> int:
    """As admission does: each counted, then to the lane if within its share. How many were."""
    prompt = 0
    for _ in range(count):
        shares.offered(caller, urgency, synchronous=True)
        if shares.within_share(caller, urgency, DRAIN, lane_queued):
            shares.prompted(caller, urgency)
            prompt += 1
    return prompt


def _took(shares: CallerShares, caller: str, places: int) -> None:
    """A caller that took this many places in the lane (when it had more share)."""
    for _ in range(places):
        shares.offered(caller, 3, synchronous=True)
        shares.prompted(caller, 3)


def _early_in_a_second() -> None:
    """Redis's windows are its seconds (same host): early in one, a sync's counts span about
    one second, not two."""
    import time

    time.sleep(1.05 - time.time() % 1)


def test_a_lone_caller_has_the_lane_and_under_overload_only_its_urgent_requests_do(redis_server):
    shares = CallerShares("weather-requests", clock=ManualClock())
    assert _send(shares, NOISY, 30) == 30  # ahead of any async work of its own
    shares._was_overloaded = True  # as admission's read finds it
    assert _send(shares, NOISY, 30) == 0
    assert _send(shares, NOISY, 5, urgency=1) == 5


def test_a_lone_caller_sending_urgent_requests_keeps_a_queued_lane_for_them_from_the_start(redis_server):
    """Before any overload is seen (it takes a second or two), its others must not queue in
    the lane ahead of its urgent ones; with the lane empty there is nothing to pass, and its
    others go before its own async work."""
    shares = CallerShares("weather-requests", clock=ManualClock())
    assert _send(shares, NOISY, 1, urgency=1, lane_queued=True) == 1
    assert _send(shares, NOISY, 10, lane_queued=True) == 0
    assert _send(shares, NOISY, 3, urgency=0, lane_queued=True) == 3
    assert _send(shares, NOISY, 4, lane_queued=False) == 4


def test_with_several_callers_each_takes_the_lane_up_to_its_share(redis_server):
    shares = CallerShares("weather-requests", clock=ManualClock())
    _send(shares, POLITE, 1)
    assert _send(shares, NOISY, 30) == 9  # 0.9 of 20 a second, halved
    assert _send(shares, POLITE, 5) == 5


def test_async_work_makes_its_caller_active_but_takes_no_place_in_the_lane(redis_server):
    shares = CallerShares("weather-requests", clock=ManualClock())
    for _ in range(100):
        shares.offered(NOISY, 3, synchronous=False)
    assert _send(shares, POLITE, 15) == 9 and shares.active_callers() == 2
    assert shares.offered_per_second() == 115


def test_a_caller_beyond_its_share_in_one_process_is_beyond_it_in_every_other(redis_server):
    writer, clock = _writer(redis_server), ManualClock()
    first, second = CallerShares("weather-requests", clock=clock), CallerShares("weather-requests", clock=clock)
    _send(first, OTHER, 1)
    _took(first, NOISY, 12)
    _send(second, POLITE, 2)
    second.offered(NOISY, 3, synchronous=True)  # the second process has seen it: it reads its count back
    _early_in_a_second()
    _sync(writer, first, second)

    # Three callers: 6 a second each; the noisy one took 12 through the first process.
    assert _send(second, NOISY, 1) == 0
    assert _send(second, POLITE, 1) == 1
    assert 18 / 2 <= second.offered_per_second() <= 18


def test_urgency_orders_a_callers_own_requests_and_trust_lets_it_pass(redis_server):
    shares = CallerShares("weather-requests", trusted=["sub:billing"], clock=ManualClock())
    _send(shares, POLITE, 1)
    _send(shares, "sub:billing", 1, urgency=5)
    # Three callers: 6 a second each. 2 urgent ones first: its default ones leave as many
    # places again for more urgent ones.
    assert _send(shares, NOISY, 2, urgency=0) == 2
    assert _send(shares, NOISY, 10) == 2  # 2 taken + 2 kept, up to 6
    assert _send(shares, NOISY, 10, urgency=1) == 2  # the urgent ones fill the share
    assert _send(shares, NOISY, 1, urgency=0) == 0  # and no more: u=0 never passes another's share
    assert _send(shares, POLITE, 10, urgency=7) == 1  # u=7: a fifth of 6, 1.2 (it took one already)
    # A trusted caller's urgent requests take the lane beyond its share, its others do not.
    assert _send(shares, "sub:billing", 30, urgency=0) == 30
    assert _send(shares, "sub:billing", 10) == 0


def test_overload_is_more_offered_than_drained_two_windows_running(redis_server):
    """A closed loop's first burst (all its clients at once) fills one window; an open loop
    beyond capacity fills every one."""
    import time

    writer = _writer(redis_server)
    shares = CallerShares("weather-requests")  # this host's clock: the windows are Redis's seconds
    _early_in_a_second()
    for _ in range(100):  # a burst of 100, 5x the drain
        shares.offered(NOISY, 3, synchronous=True)
    _sync(writer, shares)
    assert not shares.overloaded(DRAIN)
    time.sleep(1.0)
    for _ in range(10):  # then what it is served (at most the drain, 20 a second)
        shares.offered(NOISY, 3, synchronous=True)
    time.sleep(0.6)
    _sync(writer, shares)
    assert not shares.overloaded(DRAIN)
    time.sleep(1.1 - time.time() % 1)
    for second in range(2):  # 50 a second, two windows running
        for _ in range(50):
            shares.offered(NOISY, 3, synchronous=True)
        time.sleep(0.6)
        _sync(writer, shares)
        assert shares.overloaded(DRAIN) == (second == 1)
        time.sleep(1.05 - time.time() % 1)


def test_counts_slide_out_with_the_windows_and_unsynced_ones_are_dropped(redis_server):
    writer, clock = _writer(redis_server), ManualClock()
    shares = CallerShares("weather-requests", clock=clock)
    _send(shares, OTHER, 1)
    _send(shares, POLITE, 1)
    assert _send(shares, NOISY, 30) == 6  # a third of 18
    _early_in_a_second()
    _sync(writer, shares)
    assert _send(shares, NOISY, 30) <= 1  # its 6, read back over a second or so
    # Windows are Redis's seconds: two of them later, the surge is gone from every count.
    import time

    time.sleep(2.1)
    clock.now += 2.1
    _send(shares, OTHER, 1)
    _sync(writer, shares)
    assert _send(shares, NOISY, 30) >= 5  # a share again (half of 18, less what this second counted)

    # Counted but never synced (Redis unreachable): dropped after two windows, never a latch.
    _send(shares, OTHER, 1)
    assert _send(shares, NOISY, 30) == 0
    shares.sync_items()
    shares.absorb(NotSent("unreachable"), NotSent("unreachable"))
    clock.now += 2.5
    shares.sync_items()
    _send(shares, OTHER, 1)
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
