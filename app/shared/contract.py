"""The wire contract between proxy and worker: key names, field names, encoding.

Nothing else in the code base spells a key or a field. Changing anything here is a
protocol change: bump PROTOCOL_VERSION and keep the old decoder until every
replica speaks the new one.

Stream entries are flat maps of bytes. Requests and replies carry their payload as
one JSON document in the ``body`` field so that adding a payload field never
changes the envelope.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from itertools import count
from typing import Any

import orjson

PROTOCOL_VERSION = "1"

DEFAULT_REQUEST_STREAM = "weather-requests"
DEFAULT_CONSUMER_GROUP = "weather-workers"
DEAD_LETTER_SUFFIX = ":dlq"
PROMPT_LANE_SUFFIX = ":urgent"
REPLY_STREAM_PREFIX = "weather-responses:"

# A reply stream belongs to one proxy process. The owner refreshes this TTL while it
# lives and every reply sets it again, so a stream whose owner died expires on its own.
REPLY_STREAM_TTL_SECONDS = 120
# Replies are read within milliseconds of being written; the cap only has to
# outlast a short listener reconnect at the in-flight limit of one process.
REPLY_STREAM_MAXLEN = 10_000

FIELD_VERSION = "v"
FIELD_REQUEST_ID = "id"
FIELD_REPLY_TO = "reply_to"
FIELD_DEADLINE_MS = "deadline_ms"
FIELD_BODY = "body"
FIELD_STATUS = "status"
FIELD_TRACEPARENT = "traceparent"
FIELD_SUBJECT = "sub"
# The proxy's own key for routing a reply to its waiter, present only when it differs
# from the request id (a caller may send the same X-Request-ID twice at once).
FIELD_CORRELATION_ID = "cid"

# Added to an entry when it is moved to the dead-letter stream.
FIELD_DLQ_REASON = "dlq_reason"
FIELD_DLQ_DELIVERIES = "dlq_delivery_count"
FIELD_DLQ_SOURCE_ID = "dlq_source_id"
FIELD_DLQ_CONSUMER = "dlq_consumer"

STATUS_OK = "ok"
STATUS_ERROR = "error"

MAX_TEXT_LENGTH = 200
# What a caller's X-Request-ID must look like to be kept end to end: safe in logs,
# headers and stream fields without escaping.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# Asynchronous requests (RFC 7240 respond-async / wait): the proxy writes a result record
# with the entry, in one script on the shard's slot; the worker fills it with the outcome.
RESULT_KEY_PREFIX = "weather-results:"
# Entry fields of an async request: its record's key and how long a finished result is kept.
FIELD_RESULT = "result"
FIELD_RESULT_TTL_MS = "result_ttl_ms"
# The record's hash fields.
RECORD_STATE = "state"
RECORD_STATUS = "status"
RECORD_BODY = "body"
RECORD_SUBJECT = "sub"
RECORD_ACCEPTED_MS = "accepted_ms"
RECORD_STARTED_MS = "started_ms"
STATE_QUEUED = "queued"
STATE_WORKING = "working"
STATE_DONE = "done"
# The error of an async request whose deadline passed before a worker took it.
ERROR_EXPIRED = "expired"
# An async request's id: its shard's hash tag (so any proxy finds the record's slot) and
# 128 random bits (so nobody guesses another caller's id).
ASYNC_ID_PATTERN = re.compile(r"(?:([a-z0-9-]{1,32})\.)?([0-9a-f]{32})")


# Idempotency-Key (IETF httpapi draft): one hash per key and caller, on the key's shard.
IDEMPOTENCY_KEY_PREFIX = "weather-idempotency:"


def idempotency_key(request_stream: str, fingerprint: str) -> str:
    tag = shard_tag_of(request_stream)
    return f"{IDEMPOTENCY_KEY_PREFIX}{{{tag}}}:{fingerprint}" if tag else f"{IDEMPOTENCY_KEY_PREFIX}{fingerprint}"


def new_async_id(request_stream: str) -> str:
    tag = shard_tag_of(request_stream)
    token = secrets.token_hex(16)
    return f"{tag}.{token}" if tag else token


def result_key(async_id: str) -> str | None:
    """The record of an async request id, or None for text that is not one."""
    match = ASYNC_ID_PATTERN.fullmatch(async_id)
    if match is None:
        return None
    tag, token = match.groups()
    return f"{RESULT_KEY_PREFIX}{{{tag}}}:{token}" if tag else f"{RESULT_KEY_PREFIX}{token}"

_B = {name: name.encode() for name in (
    FIELD_VERSION, FIELD_REQUEST_ID, FIELD_REPLY_TO, FIELD_DEADLINE_MS,
    FIELD_BODY, FIELD_STATUS, FIELD_TRACEPARENT, FIELD_SUBJECT, FIELD_CORRELATION_ID,
    FIELD_RESULT, FIELD_RESULT_TTL_MS,
)}


def waited_share(entry_id: bytes, fields: dict[bytes, bytes], at_ms: float) -> float:
    """How much of the time its deadline gave it a synchronous entry has spent waiting: from
    its id's time (when Redis added it) to ``at_ms``, over that to its deadline. 0 for an
    async entry (its deadline is hours, not seconds: no measure beside a synchronous one's),
    for one whose id or deadline cannot be read (the handler dead-letters those), and for one
    whose deadline is not after its id's time (clocks apart: no measure either)."""
    if _B[FIELD_RESULT] in fields:
        return 0.0
    try:
        added_ms = int(entry_id.partition(b"-")[0])
        deadline_ms = int(fields[_B[FIELD_DEADLINE_MS]])
    except (KeyError, ValueError):
        return 0.0
    if deadline_ms <= added_ms:
        return 0.0
    return max(0.0, at_ms - added_ms) / (deadline_ms - added_ms)


class PoisonEntry(ValueError):
    """A stream entry that can never be processed, whatever the retry."""


def dead_letter_stream(request_stream: str) -> str:
    # A shard's hash tag is kept, so its dead letters share its slot (one script moves them).
    return request_stream + DEAD_LETTER_SUFFIX


def prompt_lane(request_stream: str) -> str:
    """A shard's prompt lane: the synchronous requests of callers within their share of the
    workers (app.proxy.fairness; below capacity, every synchronous request). Its hash tag is
    kept, so it lives on the shard's node; the shard's workers read it before the shard
    itself, and acknowledge, claim and dead-letter its entries there like the shard's. Its
    name ends in ":urgent" (it once held urgent requests only): kept, so that workers,
    KEDA triggers and ACL rules of earlier releases go on reading it through an upgrade."""
    return request_stream + PROMPT_LANE_SUFFIX


def shard_sets_key(base: str) -> str:
    """Which shard counts proxies write: a sorted set of REQUEST_STREAM_SHARDS values, each
    scored by when a proxy last announced it (ms, the key's own Redis clock)."""
    return base + ":shard-sets"


def drain_key(base: str) -> str:
    """How fast the workers drain the request streams: a hash, one field per worker (its
    consumer name), each a ``Drain`` that worker publishes every second. Proxies admit
    requests by the wait it predicts (app.proxy.admission)."""
    return base + ":drain"


@dataclass(frozen=True, slots=True)
class Drain:
    """One worker's figures as it publishes them: when (ms, its clock), how many entries a
    second its terminals finish when busy (0 until it has finished some), how long one
    entry's work takes (the median of its recent ones), and how many terminals it runs."""

    at_ms: int
    per_second: float
    work_seconds: float
    terminals: int

    def encode(self) -> str:
        return f"{self.at_ms} {self.per_second:.3f} {self.work_seconds:.4f} {self.terminals}"

    @classmethod
    def decode(cls, raw: bytes | str) -> Drain | None:
        """None for a value this version cannot read (a newer worker's, or garbage)."""
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        try:
            at_ms, per_second, work_seconds, terminals = text.split()
            return cls(int(at_ms), float(per_second), float(work_seconds), int(terminals))
        except ValueError:
            return None


def async_horizon_key(base: str) -> str:
    """Until when (ms) some proxy's async entries may still be done: no proxy trims them before."""
    return base + ":async-horizon"


def request_streams(base: str, shards: int, tagged: bool) -> list[str]:
    """The request stream keys: ``base`` alone when there is one shard and no cluster,
    else one ``base:{tag}`` per shard, so each shard's stream, dead-letter stream and
    group live in one cluster slot."""
    if shards == 1 and not tagged:
        return [base]
    return [f"{base}:{{{shard_tag(index, shards)}}}" for index in range(shards)]


@lru_cache(maxsize=64)
def shard_tag(index: int, shards: int) -> str:
    """A hash tag whose slot lies in the middle half of the index-th of ``shards`` equal
    ranges of the slot space. A cluster whose primaries hold equal contiguous slot ranges
    (what ``redis-cli --cluster create`` and rebalance make) then holds an equal share of
    the shards on each primary whenever the shard count is a multiple of the primaries."""
    # Imported here, not at the top: gunicorn's master loads this module to validate the
    # settings, and a redis import there (it imports ssl) makes gevent warn when it patches
    # ssl in the forked workers.
    from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

    width = REDIS_CLUSTER_HASH_SLOTS / shards
    low = int(index * width + width / 4)
    high = max(low, int(index * width + 3 * width / 4) - 1)
    for attempt in count():
        tag = f"s{index}-{attempt}"
        if low <= key_slot(tag.encode()) <= high:
            return tag
    raise AssertionError("unreachable")  # pragma: no cover


def reply_streams(request_streams: list[str], host: str, pid: int, token: str) -> dict[str, str]:
    """A proxy process's reply stream for each request stream shard.

    A shard's reply streams carry the shard's hash tag: a reply lives in the slot (so on
    the node) of the request it answers, replies spread over the cluster exactly as
    requests do, and a node's failure touches only its own shards' requests and replies.
    Without shard tags (one stream, no cluster) the process has one reply stream, tagged
    by the process. The token makes a name unique even when a restarted container reuses
    host and pid."""
    process = f"{host}:{pid}:{token}"
    streams = {}
    for stream in request_streams:
        tag = shard_tag_of(stream)
        streams[stream] = f"{REPLY_STREAM_PREFIX}{{{tag}}}:{process}" if tag else f"{REPLY_STREAM_PREFIX}{{{process}}}"
    return streams


def shard_tag_of(stream: str) -> str:
    """The hash tag of a request stream shard, or "" for an untagged stream."""
    start = stream.find("{")
    end = stream.find("}", start + 1)
    return stream[start + 1:end] if start >= 0 and end > start + 1 else ""


def now_ms() -> int:
    return int(time.time() * 1000)


def utc_timestamp() -> str:
    """How every JSON body writes a time: ISO 8601 in UTC with a Z."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _text(fields: dict[bytes, bytes], name: str) -> str:
    raw = fields.get(_B[name])
    if raw is None:
        raise PoisonEntry(f"missing field {name!r}")
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise PoisonEntry(f"field {name!r} is not UTF-8") from exc


def _json_object(raw: str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PoisonEntry(f"{what} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise PoisonEntry(f"{what} is not a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class WeatherRequest:
    request_id: str
    reply_to: str
    deadline_ms: int
    city: str
    location: str
    traceparent: str = ""
    # The authenticated caller (JWT `sub`), for the worker's logs; empty without auth.
    subject: str = ""
    correlation_id: str = ""
    # Async requests only: the record the outcome is kept in, and for how long. Such a
    # request may have no reply_to (nobody waits on a stream for it).
    result_key: str = ""
    result_ttl_ms: int = 0

    def expired(self, at_ms: int | None = None) -> bool:
        return (now_ms() if at_ms is None else at_ms) > self.deadline_ms

    def to_fields(self) -> dict[str, str | bytes]:
        fields: dict[str, str | bytes] = {
            FIELD_VERSION: PROTOCOL_VERSION,
            FIELD_REQUEST_ID: self.request_id,
            FIELD_REPLY_TO: self.reply_to,
            FIELD_DEADLINE_MS: str(self.deadline_ms),
            FIELD_BODY: orjson.dumps({"city": self.city, "location": self.location}),
        }
        if self.traceparent:
            fields[FIELD_TRACEPARENT] = self.traceparent
        if self.subject:
            fields[FIELD_SUBJECT] = self.subject
        if self.correlation_id and self.correlation_id != self.request_id:
            fields[FIELD_CORRELATION_ID] = self.correlation_id
        if self.result_key:
            fields[FIELD_RESULT] = self.result_key
            fields[FIELD_RESULT_TTL_MS] = str(self.result_ttl_ms)
        return fields

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> WeatherRequest:
        version = _text(fields, FIELD_VERSION)
        if version != PROTOCOL_VERSION:
            raise PoisonEntry(f"unsupported protocol version {version!r}")
        request_id = _text(fields, FIELD_REQUEST_ID)
        if not REQUEST_ID_PATTERN.fullmatch(request_id):
            raise PoisonEntry("request id is not 1-64 characters of [A-Za-z0-9._:-]")
        correlation_id = fields.get(_B[FIELD_CORRELATION_ID], b"").decode(errors="replace")
        if len(correlation_id) > 64:
            raise PoisonEntry("correlation id is too long")
        result_key, result_ttl_ms = _result(fields)
        reply_to = _text(fields, FIELD_REPLY_TO)
        # A worker writes only to reply streams and result records, never to a key an entry
        # happens to name.
        if not (reply_to.startswith(REPLY_STREAM_PREFIX) or (result_key and not reply_to)) or len(reply_to) > 256:
            raise PoisonEntry("reply_to is not a reply stream")
        try:
            deadline_ms = int(_text(fields, FIELD_DEADLINE_MS))
        except ValueError as exc:
            raise PoisonEntry("deadline_ms is not an integer") from exc
        body = _json_object(_text(fields, FIELD_BODY), "body")
        city, location = body.get("city"), body.get("location")
        for name, value in (("city", city), ("location", location)):
            if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT_LENGTH:
                raise PoisonEntry(f"body.{name} is not a non-empty string")
        traceparent_raw = fields.get(_B[FIELD_TRACEPARENT], b"")
        subject_raw = fields.get(_B[FIELD_SUBJECT], b"")
        return cls(
            request_id=request_id,
            reply_to=reply_to,
            deadline_ms=deadline_ms,
            city=city,  # type: ignore[arg-type]
            location=location,  # type: ignore[arg-type]
            traceparent=traceparent_raw.decode(errors="replace"),
            subject=subject_raw.decode(errors="replace")[:256],
            correlation_id=correlation_id,
            result_key=result_key,
            result_ttl_ms=result_ttl_ms,
        )

    def reply(self, status: str, body: dict[str, Any]) -> Reply:
        return Reply(self.request_id, status, body, self.correlation_id)


def accepted_record(subject: str, accepted_ms: int) -> list[str]:
    """The record's fields as the proxy writes them with the entry (the entry id is added)."""
    return [RECORD_STATE, STATE_QUEUED, RECORD_SUBJECT, subject, RECORD_ACCEPTED_MS, str(accepted_ms)]


def started_record(started_ms: int) -> list[str]:
    return [RECORD_STATE, STATE_WORKING, RECORD_STARTED_MS, str(started_ms)]


def finished_record(reply: Reply) -> list[str | bytes]:
    return [RECORD_STATE, STATE_DONE, RECORD_STATUS, reply.status, RECORD_BODY, orjson.dumps(reply.body)]


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """An async request as its record tells it: queued, in work, or done with its reply."""

    state: str
    subject: str
    # 0 where the record lost it (it was written without the proxy's fields).
    accepted_ms: int
    reply: Reply | None = None

    def age_seconds(self, now_ms: int) -> float:
        """Seconds since the proxy accepted it; 0 when that is unknown rather than the time since 1970."""
        if self.accepted_ms <= 0:
            return 0.0
        return max(0.0, (now_ms - self.accepted_ms) / 1000)

    @classmethod
    def from_hash(cls, async_id: str, fields: dict[bytes, bytes]) -> ResultRecord:
        def text(name: str) -> str:
            return fields.get(name.encode(), b"").decode(errors="replace")

        state = text(RECORD_STATE)
        accepted = text(RECORD_ACCEPTED_MS)
        reply = None
        if state == STATE_DONE:
            status = text(RECORD_STATUS)
            reply = Reply(async_id, status if status in (STATUS_OK, STATUS_ERROR) else STATUS_ERROR,
                          _json_object(text(RECORD_BODY) or "{}", "result body"))
        return cls(state, text(RECORD_SUBJECT), int(accepted) if accepted.isdigit() else 0, reply)


def _result(fields: dict[bytes, bytes]) -> tuple[str, int]:
    raw = fields.get(_B[FIELD_RESULT])
    if raw is None:
        return "", 0
    key = raw.decode(errors="replace")
    if not key.startswith(RESULT_KEY_PREFIX) or len(key) > 128:
        raise PoisonEntry("result is not a result record")
    ttl = fields.get(_B[FIELD_RESULT_TTL_MS], b"")
    if not ttl.isdigit() or not 0 < int(ttl) <= 7 * 86_400_000:
        raise PoisonEntry("result_ttl_ms is not a duration of at most 7 days")
    return key, int(ttl)


@dataclass(frozen=True, slots=True)
class Reply:
    request_id: str
    status: str
    body: dict[str, Any] = field(default_factory=dict)
    correlation_id: str = ""

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def waiter_key(self) -> str:
        """The key the asking proxy waits under: its correlation id when it sent one."""
        return self.correlation_id or self.request_id

    def to_fields(self) -> dict[str, str | bytes]:
        fields: dict[str, str | bytes] = {
            FIELD_REQUEST_ID: self.request_id,
            FIELD_STATUS: self.status,
            FIELD_BODY: orjson.dumps(self.body),
        }
        if self.correlation_id and self.correlation_id != self.request_id:
            fields[FIELD_CORRELATION_ID] = self.correlation_id
        return fields

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> Reply:
        request_id = _text(fields, FIELD_REQUEST_ID)
        status = _text(fields, FIELD_STATUS)
        if status not in (STATUS_OK, STATUS_ERROR):
            raise PoisonEntry(f"unknown reply status {status!r}")
        correlation_id = fields.get(_B[FIELD_CORRELATION_ID], b"").decode(errors="replace")
        return cls(request_id, status, _json_object(_text(fields, FIELD_BODY), "reply body"), correlation_id)
