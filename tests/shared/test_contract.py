from __future__ import annotations

import orjson
import pytest

from app.shared import contract


def _request(**overrides) -> contract.WeatherRequest:
    fields = {"request_id": "abc", "reply_to": "weather-responses:h:1:t", "deadline_ms": 10**13,
              "city": "Oslo", "location": "Norway"}
    fields.update(overrides)
    return contract.WeatherRequest(**fields)


def _as_stored(fields: dict) -> dict[bytes, bytes]:
    """What a reader gets back from Redis: bytes keys and values."""
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


def test_request_round_trip():
    request = _request(traceparent="00-abc-def-01")

    assert contract.WeatherRequest.from_fields(_as_stored(request.to_fields())) == request


def test_reply_round_trip():
    reply = contract.Reply("abc", contract.STATUS_OK, {"city": "Oslo"})

    assert contract.Reply.from_fields(_as_stored(reply.to_fields())) == reply


def test_the_correlation_id_travels_only_when_it_differs_from_the_request_id():
    assert "cid" not in _request(correlation_id="abc").to_fields()
    request = contract.WeatherRequest.from_fields(_as_stored(_request(correlation_id="c1").to_fields()))

    reply = contract.Reply.from_fields(_as_stored(request.reply(contract.STATUS_OK, {}).to_fields()))

    assert (reply.request_id, reply.waiter_key) == ("abc", "c1")
    # A reply from a worker that predates correlation ids is still routed, by the request id.
    assert contract.Reply("abc", contract.STATUS_OK).waiter_key == "abc"


def test_expiry_is_judged_against_the_deadline():
    request = _request(deadline_ms=1000)

    assert request.expired(at_ms=1001)
    assert not request.expired(at_ms=1000)


POISON = [
    pytest.param({}, "missing field 'v'", id="empty"),
    pytest.param({"v": "9"}, "unsupported protocol version", id="future-version"),
    pytest.param({"reply_to": "weather-requests"}, "reply_to is not a reply stream", id="reply-to-elsewhere"),
    pytest.param({"reply_to": None}, "missing field 'reply_to'", id="no-reply-to"),
    pytest.param({"deadline_ms": "soon"}, "deadline_ms is not an integer", id="bad-deadline"),
    pytest.param({"body": "{nope"}, "body is not valid JSON", id="bad-json"),
    pytest.param({"body": "[1]"}, "body is not a JSON object", id="json-array"),
    pytest.param({"body": orjson.dumps({"city": "", "location": "x"})}, "body.city", id="empty-city"),
    pytest.param({"id": b"\xff\xfe"}, "not UTF-8", id="binary-id"),
    pytest.param({"id": "a b"}, "request id is not", id="id-with-space"),
    pytest.param({"id": "x" * 65}, "request id is not", id="id-too-long"),
    pytest.param({"cid": "x" * 65}, "correlation id is too long", id="cid-too-long"),
]


@pytest.mark.parametrize(("changes", "reason"), POISON)
def test_undecodable_entries_are_poison(changes, reason):
    fields = dict(_request().to_fields())
    if changes:
        for key, value in changes.items():
            if value is None:
                fields.pop(key)
            else:
                fields[key] = value
    else:
        fields = {}

    with pytest.raises(contract.PoisonEntry, match=reason):
        contract.WeatherRequest.from_fields(_as_stored(fields))


def test_a_record_tells_its_age_and_zero_when_it_lost_its_acceptance_time():
    accepted = contract.ResultRecord.from_hash("x", {b"state": b"queued", b"accepted_ms": b"1000"})
    assert accepted.age_seconds(3500) == 2.5
    # A record without the proxy's fields must not claim to be 56 years old.
    damaged = contract.ResultRecord.from_hash("x", {b"state": b"working"})
    assert damaged.age_seconds(1_764_000_000_000) == 0.0
