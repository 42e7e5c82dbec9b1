"""Admission by expected wait: judged from a real Redis's lag and the workers' published drain."""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from app.proxy.admission import (
    DRAIN_STALE_SECONDS,
    FIGURES_STALE_SECONDS,
    STANDING_INTERVAL_SECONDS,
    Admission,
    AdmissionPolicy,
)
from app.proxy.fairness import CallerShares
from app.shared import contract
from app.shared.replication import ReplicaWait
from app.shared.routing import NodeWriter
from app.shared.settings import CommonSettings
from tests.support.clocks import ManualClock
from tests.support.processes import metric_value, wait_until
from tools.load_runs import run_open_loop

pytestmark = pytest.mark.system

GROUP = "weather-workers"
POLICY = AdmissionPolicy(wait_share=0.5, standing_share=0.1, cold_backlog=20)



def _admission(redis_server, streams: list[str], clock: ManualClock, **policy: float) -> Admission:
    topology = CommonSettings(redis_url=redis_server.url).topology
    client = topology.client(client_name="test-admission")
    return Admission(NodeWriter(topology, client, ReplicaWait(0, 0)), streams, contract.drain_key("weather-requests"),
                     GROUP, AdmissionPolicy(**{**POLICY.__dict__, **policy}) if policy else POLICY,
                     CallerShares("weather-requests", clock=clock), clock=clock)


def _backlog(client, stream: str, entries: int) -> None:
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    for index in range(entries):
        client.xadd(stream, {"n": index})


def _publish(client, per_second: float, work_seconds: float, name: str = "w1", at_ms: int | None = None) -> None:
    drain = contract.Drain(contract.now_ms() if at_ms is None else at_ms, per_second, work_seconds, 5)
    client.hset(contract.drain_key("weather-requests"), name, drain.encode())


NOISY, POLITE = "ip:127.0.0.2", "ip:127.0.0.3"


def _beyond_its_share(admission: Admission, caller: str = NOISY, drain: float = 20) -> int:
    """Overload (async work offered at 5x the drain), ten callers active in the last second
    (a share is 0.9/10 of the drain), and this one took more places in the lane than its
    share. Judged from this process's counts alone, so the rates are exact (as between two
    reads before any sync). Returns its places."""
    admission._shares._synced_at = -math.inf
    for _ in range(int(5 * drain)):
        admission._shares.offered("ip:127.0.0.9", 3, synchronous=False)
    for other in range(9):
        admission._shares.offered(f"ip:10.0.0.{other}", 3, synchronous=True)
    places = int(0.09 * drain) + 1
    for _ in range(places):
        admission._shares.offered(caller, 3, synchronous=True)
        admission._shares.prompted(caller, 3)
    return places


LANE = contract.prompt_lane("weather-requests")


def test_beyond_its_share_a_request_may_wait_half_what_its_deadline_leaves(redis_server):
    client, clock = redis_server.client(), ManualClock()
    _backlog(client, LANE, 30)  # 1.5 s of wait in the lane at 20 a second
    # 40 entries in the shard at the 18 a second the lanes leave of 20: 2.2 s more.
    _backlog(client, "weather-requests", 40)
    _publish(client, per_second=20, work_seconds=0.3)
    admission = _admission(redis_server, ["weather-requests"], clock)
    admission.refresh()
    # One caller, no overload: nobody to share with, the lane ahead of any async work.
    assert admission.judge(10, caller=NOISY).prompt
    _beyond_its_share(admission)

    verdict = admission.judge(10, caller=NOISY)
    assert not verdict.refused and not verdict.prompt and verdict.expected_wait == pytest.approx(1.5 + 40 / 18)
    # A 4 s deadline less 0.3 s of work leaves 3.7 s, half of it 1.85 s: less than 3.7 s.
    refused = admission.judge(4, caller=NOISY)
    assert refused.refused and refused.reason == "share" and refused.retry_after == 2
    # A caller within its share goes to the lane, ahead of the shard's backlog.
    polite = admission.judge(4, caller=POLITE)
    assert not polite.refused and polite.prompt and polite.expected_wait == pytest.approx(1.5)

    # The queue not empty for a while (standing), but no overload (a closed loop): the
    # burst limit still.
    clock.now += STANDING_INTERVAL_SECONDS + 0.1
    assert not admission.judge(10, caller=NOISY).refused
    # Overload (as a read finds it: two windows running) and a standing queue: a tenth.
    admission._overloaded = True
    assert admission.judge(10, caller=NOISY).refused
    # The urgent, and async requests, are not held to the standing limit.
    assert not admission.judge(10, urgency=1, caller=NOISY).refused
    assert not admission.judge(3600, patient=True, caller=NOISY).refused

    client.xreadgroup(GROUP, "c", {"weather-requests": ">", LANE: ">"}, count=40)
    admission.refresh()  # drained: empty again
    _beyond_its_share(admission)
    assert not admission.judge(10, caller=NOISY).refused


def test_an_empty_queue_admits_whatever_the_work_takes(redis_server):
    """Work of 6 s (or 12 s) under a 10 s deadline: nothing waits ahead, so it is admitted."""
    client, clock = redis_server.client(), ManualClock()
    _backlog(client, "weather-requests", 0)
    _backlog(client, LANE, 0)
    admission = _admission(redis_server, ["weather-requests"], clock)
    for work_seconds in (6.0, 12.0):
        _publish(client, per_second=3.3, work_seconds=work_seconds)
        admission.refresh()
        _beyond_its_share(admission, drain=3.3)
        assert not admission.judge(10, caller=NOISY).refused
    _backlog_more = [client.xadd(LANE, {"n": index}) for index in range(10)]
    admission.refresh()
    _beyond_its_share(admission, drain=3.3)
    assert len(_backlog_more) == 10 and admission.judge(10, caller=NOISY).refused


def test_the_least_urgent_beyond_their_share_are_refused_first(redis_server):
    client, clock = redis_server.client(), ManualClock()
    _backlog(client, LANE, 30)  # 1.5 s of wait at 20 a second, ahead of the shard
    _backlog(client, "weather-requests", 0)
    _publish(client, per_second=20, work_seconds=0.2)
    admission = _admission(redis_server, ["weather-requests"], clock)
    admission.refresh()
    _beyond_its_share(admission)

    # Limit 4.9 s at u=3; u=7 gets a fifth of it (0.98 s), u=5 three fifths (2.94 s); its
    # urgent requests may take its whole share, which its default ones took: u=0 waits in
    # the shard too, with the default's limit.
    verdicts = [admission.judge(10, urgency=u, caller=NOISY) for u in (0, 3, 5, 7)]
    assert [verdict.refused for verdict in verdicts] == [False, False, False, True]
    assert [verdict.prompt for verdict in verdicts] == [False, False, False, False]


def test_what_this_process_admitted_counts_until_the_next_read(redis_server):
    client, clock = redis_server.client(), ManualClock()
    _backlog(client, "weather-requests", 0)
    _publish(client, per_second=10, work_seconds=0.1)
    admission = _admission(redis_server, ["weather-requests"], clock)
    admission.refresh()
    admitted = 0
    # Async, so to the shard: 4 s less 0.1 s of work, half of it 1.95 s of wait allowed.
    while not admission.admit(4, patient=True, caller="ip:10.0.0.1").refused:
        admitted += 1
    assert admitted == 20


def test_a_plain_request_skips_a_deep_shard_and_a_keyed_one_is_judged_by_its_own(redis_server):
    client, clock = redis_server.client(), ManualClock()
    streams = contract.request_streams("weather-requests", 2, tagged=False)
    _backlog(client, streams[0], 200)
    _backlog(client, streams[1], 0)
    for stream in streams:
        _backlog(client, contract.prompt_lane(stream), 30)  # 1.5 s in each lane: shares apply
    _publish(client, per_second=40, work_seconds=0.1)  # 20 a second per shard
    admission = _admission(redis_server, streams, clock)
    admission.refresh()
    _beyond_its_share(admission, drain=40)

    verdict = admission.judge(10, caller=NOISY)
    assert not verdict.refused and verdict.deep == {streams[0]}
    assert admission.judge(10, only=streams[0], caller=NOISY).refused
    assert not admission.judge(10, only=streams[1], caller=NOISY).refused


def test_a_drained_shards_phantom_lag_is_never_a_backlog(redis_server):
    """Redis's lag is entries added minus the group's read counter; after failovers the soak
    found the counter behind for good (lag 113 on a drained stream), and every request of
    that shard's Idempotency-Keys was refused. Set here as a replica's stale counter would be."""
    client, clock = redis_server.client(), ManualClock()
    streams = contract.request_streams("weather-requests", 2, tagged=False)
    _backlog(client, streams[0], 200)
    _backlog(client, streams[1], 0)
    client.xreadgroup(GROUP, "c", {streams[0]: ">"}, count=200)
    last = client.xinfo_groups(streams[0])[0]["last-delivered-id"]
    client.execute_command("XGROUP", "SETID", streams[0], GROUP, last, "ENTRIESREAD", 87)
    assert client.xinfo_groups(streams[0])[0]["lag"] == 113  # the figure the soak saw
    _publish(client, per_second=40, work_seconds=0.1)
    admission = _admission(redis_server, streams, clock)
    admission.refresh()
    _beyond_its_share(admission, drain=40)

    assert not admission.judge(10, only=streams[0], caller=NOISY).refused
    assert admission.judge(10, caller=NOISY).deep == frozenset()
    # A real backlog counts, and only it: one entry waits, not 114.
    client.xadd(streams[0], {"n": "new"})
    assert client.xinfo_groups(streams[0])[0]["lag"] == 114
    admission.refresh()
    assert admission._lag[streams[0]] == 1


def test_without_a_published_drain_a_bounded_backlog_is_admitted(redis_server):
    client, clock = redis_server.client(), ManualClock()
    _backlog(client, "weather-requests", 19)
    admission = _admission(redis_server, ["weather-requests"], clock)
    admission.refresh()
    assert not admission.admit(10).refused  # the 20th: ADMISSION_COLD_BACKLOG
    cold = admission.judge(10)
    assert cold.refused and cold.reason == "cold" and cold.retry_after == 5


def test_a_worker_counts_while_its_figures_change_whatever_its_clock_says(redis_server):
    """Judged on the proxy's own clock: a worker host 10 s behind (or a proxy 10 s ahead)
    is live while it publishes, and one that stopped is gone 10 s later, whatever its time."""
    client, clock = redis_server.client(), ManualClock()
    _backlog(client, "weather-requests", 0)
    admission = _admission(redis_server, ["weather-requests"], clock)
    behind_ms = contract.now_ms() - 60_000
    for second in range(12):
        _publish(client, per_second=20, work_seconds=0.1, at_ms=behind_ms + second * 1000)
        admission.refresh()
        clock.now += 1
        assert admission._per_second == 20
    for _ in range(11):  # it stops publishing
        admission.refresh()
        clock.now += 1
    admission.refresh()
    assert admission.judge(10).reason == "" and admission._per_second == 0


def test_connections_are_dropped_only_for_a_backlog_no_worker_drains_any_more(redis_server):
    """A primary Sentinel replaced but did not demote yet answers with figures that stand
    still: admission's and the enqueue path's connections to it are dropped so that the
    next read and write find the new primary. Not for a steady backlog workers drain (its
    last-delivered id moves), nor for one that waits for a first worker (scale from zero)."""
    client, clock = redis_server.client(), ManualClock()
    dropped: list[str] = []
    topology = CommonSettings(redis_url=redis_server.url).topology
    admission = Admission(NodeWriter(topology, topology.client(client_name="test-admission"), ReplicaWait(0, 0)),
                          ["weather-requests"], contract.drain_key("weather-requests"), GROUP, POLICY,
                          CallerShares("weather-requests", clock=clock), clock=clock, on_frozen=dropped.append)
    _backlog(client, "weather-requests", 5)

    def rounds(count: int, worker_delivers: bool = False, publish: bool = True) -> None:
        for second in range(count):
            if publish:
                _publish(client, per_second=20, work_seconds=0.1, at_ms=contract.now_ms() + second)
            if worker_delivers:  # one read, one more added: the same lag
                client.xreadgroup(GROUP, "w1", {"weather-requests": ">"}, count=1)
                client.xadd("weather-requests", {"n": "more"})
            admission.refresh()
            clock.now += 1

    rounds(3, publish=False)  # no worker yet: a backlog that waits for one
    assert dropped == []
    rounds(3, worker_delivers=True)  # drained at the rate it grows
    assert dropped == []
    rounds(3)  # the workers went elsewhere: nobody delivers here, the figures stand still
    assert dropped and set(dropped) == {"weather-requests"}


def test_figures_that_cannot_be_read_age_instead_of_latching(redis_server, tmp_path):
    client, clock = redis_server.client(), ManualClock()
    _backlog(client, "weather-requests", 200)  # 10 s of wait at 20 a second
    _publish(client, per_second=20, work_seconds=0.1)
    admission = _admission(redis_server, ["weather-requests"], clock)
    admission.refresh()
    places = _beyond_its_share(admission)
    assert admission.judge(10, patient=True).refused

    redis_server.stop()  # nothing can be read any more
    clock.now += 1
    admission.refresh()
    # The last figures, for a while: 200 entries at what the lanes leave of 20 a second.
    assert admission.judge(10, patient=True).expected_wait == pytest.approx(200 / (20 - places))
    clock.now += FIGURES_STALE_SECONDS
    admission.refresh()
    # The backlog is not known any more: admission fails open.
    assert admission._lag["weather-requests"] == 0 and admission.judge(10, patient=True).expected_wait == 0
    clock.now += DRAIN_STALE_SECONDS
    admission.refresh()
    assert admission._per_second == 0  # nor the drain: cold, bounded by ADMISSION_COLD_BACKLOG


def test_overload_is_refused_at_once_and_what_is_admitted_is_served_in_time(stack):
    """One worker of 5 terminals at 100-500 ms (about 16.7 a second) offered 40 a second."""
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="10").wait_ready()
    stack.worker("w", WORKER_TERMINALS="5", PROCESSING_DELAY_MS="100-500").wait_ready()
    asyncio.run(run_open_loop(proxy.url, rate=5, count=None, timeout=15, duration=2))  # the drain is learned

    result = asyncio.run(run_open_loop(proxy.url, rate=40, count=None, timeout=15, duration=15))

    statuses = [sample.status for sample in result.samples]
    ok = [s.seconds for s in result.samples if s.status == 200]
    refused = [s.seconds for s in result.samples if s.status == 503]
    assert statuses.count(504) <= 0.02 * len(statuses), statuses.count(504)
    assert len(ok) + len(refused) + statuses.count(504) == len(statuses)
    assert len(refused) > len(statuses) / 3  # 2.4x: more than half cannot be served
    assert max(ok) <= 5.0  # within the burst limit: half the deadline
    assert sorted(refused)[int(0.99 * (len(refused) - 1))] < 1.0  # refused at once, not at the deadline


def _post(proxy, timeout: float = 10, **headers: str) -> requests.Response:
    return requests.post(proxy.url + "/WeatherForecast/city", json={"city": "Oslo", "location": "NO"},
                         headers=headers, timeout=timeout)


def test_a_refusal_is_a_problem_with_retry_after_that_says_async_would_be_accepted(stack):
    # One terminal at 200 ms (5 a second), a 1 s deadline: a burst may wait 0.5 s in all.
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="1").wait_ready()
    worker = stack.worker("w", WORKER_TERMINALS="1", PROCESSING_DELAY_MS="200").wait_ready()
    for _ in range(10):  # the worker learns its drain from these
        assert _post(proxy).status_code == 200
    wait_until(lambda: worker.metric("weather_worker_drain_per_second") > 0, 5, what="drain published")
    time.sleep(0.5)  # the proxies read it

    # An unparsable Priority is the default urgency (3), never a 400.
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: _post(proxy, Priority="u=4, garbage=("), range(20)))

    refused = [answer for answer in answers if answer.status_code == 503]
    statuses = [answer.status_code for answer in answers]
    # A request admitted at the edge (two processes judge between two reads) may be one a
    # worker then finds too late to start: its 504 comes at once, not at the deadline.
    assert refused and set(statuses) <= {200, 503, 504} and statuses.count(504) <= 2, statuses
    problem = refused[0]
    assert problem.headers["Content-Type"] == "application/problem+json"
    assert int(problem.headers["Retry-After"]) >= 1
    assert problem.json()["error"] == "over_capacity"
    assert "Prefer: respond-async" in problem.json()["detail"]
    assert max(a.elapsed.total_seconds() for a in refused) < 0.5
    metrics = requests.get(proxy.metrics_url + "/metrics", timeout=5).text
    # A burst of one caller, not an overload sustained: plain wait, not beyond its share.
    assert metric_value(metrics, "weather_proxy_shed_total", {"reason": "wait", "urgency": "3"}) == len(refused)


def test_with_no_worker_a_bounded_backlog_is_admitted_and_served_once_one_comes(stack):
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="30", ADMISSION_COLD_BACKLOG="3").wait_ready()

    first = [_post(proxy, Prefer="respond-async") for _ in range(3)]
    assert [answer.status_code for answer in first] == [202, 202, 202]
    # Each proxy process sees the other's entries within a refresh.
    def refusal() -> list[requests.Response]:  # a list: a 503 Response is falsy
        answer = _post(proxy, Prefer="respond-async")
        return [answer] if answer.status_code == 503 else []

    [refused] = wait_until(refusal, 5, what="the cold backlog full")
    assert refused.json()["error"] == "over_capacity"
    assert "no worker" in refused.json()["detail"]
    metrics = requests.get(proxy.metrics_url + "/metrics", timeout=5).text
    assert metric_value(metrics, "weather_proxy_shed_total", {"reason": "cold", "urgency": "3"}) >= 1

    stack.worker("w", PROCESSING_DELAY_MS="0").wait_ready()  # scale from zero
    for answer in first:
        location = proxy.url + answer.headers["Location"]
        wait_until(lambda location=location: requests.get(location, timeout=5).status_code == 200, 15,
                   what="an admitted request served")
    # New work is admitted again once a read (every 0.2 s) shows the backlog served.
    wait_until(lambda: _post(proxy).status_code == 200, 3, what="admitted again")


def test_a_closed_loop_within_its_deadline_is_never_refused(stack):
    """The defaults (5 terminals at 100-500 ms, 30 s deadline) and 50 clients that each wait
    for their answer: about 3 s each, never more queued than clients. It had 220 of 300 refused."""
    from tools.load_runs import run_load

    proxy = stack.proxy().wait_ready()
    stack.worker("w", WORKER_TERMINALS="5", PROCESSING_DELAY_MS="100-500").wait_ready()
    result = asyncio.run(run_load(proxy.url, count=300, concurrency=50, timeout=35))
    statuses = [sample.status for sample in result.samples]
    assert statuses.count(200) == 300, sorted(set(statuses))


def test_work_that_takes_most_of_its_deadline_is_admitted_at_low_load(stack):
    """20 terminals whose work takes 6 s of a 10 s deadline, 1 a second: the queue is empty
    whenever a request comes. It had every request refused once the first answers came."""
    proxy = stack.proxy(REQUEST_TIMEOUT_SECONDS="10").wait_ready()
    stack.worker("w", WORKER_TERMINALS="20", PROCESSING_DELAY_MS="6000").wait_ready()
    result = asyncio.run(run_open_loop(proxy.url, rate=1, count=None, timeout=15, duration=24))
    statuses = [sample.status for sample in result.samples]
    assert statuses.count(200) == len(statuses), statuses


def test_with_no_worker_what_a_process_admits_between_reads_counts_on_an_empty_queue(redis_server):
    """Scale from zero: Redis shows the queue empty, nobody drains it, and what this process
    admitted since that read waits too: the cold backlog bounds it before the next read."""
    client, clock = redis_server.client(), ManualClock()
    _backlog(client, "weather-requests", 0)
    admission = _admission(redis_server, ["weather-requests"], clock)
    admission.refresh()
    verdicts = [admission.admit(10) for _ in range(21)]
    assert [verdict.refused for verdict in verdicts] == [False] * 20 + [True]
    assert verdicts[-1].reason == "cold"
