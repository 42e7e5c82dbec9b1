"""The checker on histories written by hand: a clean one passes, and each promise broken is
named (so a soak that prints 0 violations could have printed some)."""

from __future__ import annotations

from soak.checker import AfterRun, Checker
from soak.faults import Happened
from soak.system import Execution
from soak.traffic import Attempt, Request

PROBLEM = "application/problem+json"


def _forecast(request: Request, request_id: str | None = None) -> dict:
    return {"city": request.city, "location": request.location, "temperature": 12.5,
            "requestId": request_id or request.request_id}


def _sync(number: int, status: int = 200, took: float = 0.1, **fields) -> Request:
    request = Request(number, fields.pop("kind", "sync"), f"soak-{number}", f"city-{number}", "loc-1", 10.0, **fields)
    body = _forecast(request) if status == 200 else {"error": "timeout" if status == 504 else "redis_unavailable"}
    request.attempts.append(Attempt(number, number + took, status, body,
                                    "application/json" if status == 200 else PROBLEM))
    return request


def _check(history: list[Request], faults: list[Happened] | None = None, executions: list[Execution] | None = None,
           after: AfterRun | None = None, topology: str = "cluster"):
    return Checker(history, faults or [], executions or [], topology=topology,
                   replicas_confirm=topology != "standalone", claim_idle_seconds=3.0).check(after or AfterRun())


def _rules(verdict) -> list[str]:
    return [violation.rule for violation in verdict.violations]


def test_a_clean_history_passes() -> None:
    history = [_sync(1), _sync(2, 503), _sync(3, 504, took=10.3)]
    assert _rules(_check(history)) == []


def test_a_request_without_an_answer_or_late_is_named() -> None:
    silent = _sync(1)
    silent.attempts = [Attempt(1, 13.0, None, error="ReadTimeout: no answer")]
    late = _sync(2, 504, took=12.5)
    assert _rules(_check([silent, late])) == ["answered", "deadline"]


def test_a_broken_connection_is_retried_only_where_a_proxy_process_went_away() -> None:
    retried = _sync(5)
    retried.attempts.insert(0, Attempt(4.9, 5.0, None, error="ConnectionError: reset"))
    assert _rules(_check([retried])) == ["answered"]
    kill = Happened(5.0, "proxy-kill", "proxy:1/2", ended=5.0)
    assert _rules(_check([retried], [kill])) == []


def test_a_200_with_another_requests_body_and_an_error_without_problem_json_are_named() -> None:
    wrong = _sync(1)
    wrong.attempts[0].body = {**wrong.attempts[0].body, "city": "elsewhere"}
    plain = _sync(2, 503)
    plain.attempts[0].content_type = "text/html"
    assert _rules(_check([wrong, plain])) == ["echo", "problem+json"]


def test_an_invalid_input_must_get_its_own_4xx() -> None:
    accepted = _sync(1, kind="invalid", invalid="no_location", expected=(422, "validation_error"))
    refused = Request(2, "invalid", "soak-2", "c", "l", 10.0, invalid="no_location", expected=(422, "validation_error"))
    refused.attempts.append(Attempt(2, 2.1, 422, {"error": "validation_error"}, PROBLEM))
    assert _rules(_check([accepted, refused])) == ["invalid input"]


def test_one_key_must_carry_one_result() -> None:
    first = _sync(1, kind="idempotent", key="key-1")
    repeat = _sync(2, kind="repeat", key="key-1")
    repeat.city = first.city
    repeat.attempts[0].body = {**_forecast(first), "temperature": 99.0}
    assert _rules(_check([first, repeat])) == ["idempotency"]


def test_a_key_worked_on_twice_needs_a_fault_that_explains_it() -> None:
    first = _sync(1, kind="idempotent", key="key-1")
    runs = [Execution(1.1, "worker:a", "soak-1", "1-0", 1), Execution(6.0, "worker:b", "soak-1", "1-0", 2)]
    verdict = _check([first], executions=runs)
    assert _rules(verdict) == ["idempotency"]
    frozen = Happened(1.0, "worker-freeze", "worker:a", ended=6.5)
    verdict = _check([first], [frozen], runs)
    assert _rules(verdict) == [] and len(verdict.extra_executions) == 1


def test_two_entries_for_one_key_are_a_violation_with_replicas() -> None:
    first = _sync(1, kind="idempotent", key="key-1")
    runs = [Execution(1.1, "worker:a", "soak-1", "1-0", 1), Execution(3.0, "worker:a", "soak-1", "2-0", 1)]
    assert _rules(_check([first], executions=runs)) == ["idempotency"]


def _async(number: int, result_status: int | None) -> Request:
    request = Request(number, "async", f"soak-{number}", f"city-{number}", "loc-1", 30.0, async_id=f"id-{number}")
    request.attempts.append(Attempt(number, number + 0.01, 202, {"id": request.async_id}, "application/json"))
    if result_status == 200:
        request.polls.append(Attempt(number + 1, number + 1.01, 200, _forecast(request), "application/json"))
    elif result_status is not None:
        request.polls.append(Attempt(number + 1, number + 1.01, result_status, {"error": "not_found"}, PROBLEM))
    return request


def test_an_async_result_lost_is_a_violation_with_replicas_and_a_named_loss_on_one_redis_killed() -> None:
    lost = _async(10, 404)
    assert _rules(_check([lost])) == ["lost"]
    kill = Happened(10.5, "redis-kill", "redis:x", ended=15.0)
    verdict = _check([lost], [kill], topology="standalone")
    assert _rules(verdict) == [] and len(verdict.losses) == 1
    far = Happened(30.0, "redis-kill", "redis:x", ended=35.0)
    assert _rules(_check([lost], [far], topology="standalone")) == ["lost"]


def test_an_async_result_never_done_or_changed_when_read_again_is_named() -> None:
    never = _async(1, None)
    changed = _async(2, 200)
    changed.rereads.append(Attempt(20, 20.01, 404, {"error": "not_found"}, PROBLEM))
    assert _rules(_check([never, changed])) == ["async result", "lost"]


def test_what_the_run_left_behind_is_checked() -> None:
    after = AfterRun(pending={"weather-requests": 3}, undelivered={"weather-requests": (2, 2), "x:urgent": (0, 5)},
                     consumers_holding={"weather-requests/w1": 3},
                     stream_overruns={"weather-requests": "too long"},
                     memory={"worker 1": (100, 130), "worker 2": (100, 110)},
                     series={"proxy": (100, 2500), "worker": (100, 120)}, id_labels=['x{id="soak-1"}'], dead_letters=1,
                     redis_complaints=["redis:1: worker refused xadd (command)"], afterwards=[_sync(90, 503)])
    assert _rules(_check([], after=after)) == [
        "drained", "drained", "consumers", "stream bounds", "dead letters", "memory", "metric series",
        "served after the faults", "redis", "metric series"]
