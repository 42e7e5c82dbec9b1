"""Enqueuing a request with an Idempotency-Key: at most one entry per key and caller.

The key (hashed with its caller) maps to one request stream shard, so every proxy finds
it; the key's record, the entry and its result record are written by one script on that
shard's slot, which returns the first request's id instead when the key is there. No
other shard is tried when that one cannot take the write (the key would not be found
there): the caller gets a 503. While the shard count changes, the key is first looked up
under each other count proxies announce.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.proxy.enqueue import Enqueuer, KeptResult, NoShardAvailable
from app.proxy.replicas import CHECK_SECONDS as REPLICA_CHECK_SECONDS
from app.shared import contract
from app.shared.replication import ReplicasBehind
from app.shared.routing import NodeWriter, NotSent, Routed

# An idempotent request: its key's record, its entry and its result record in one step on
# the key's shard. A key already there (and not the one being replaced) returns what it
# names instead: the request it was first sent with.
_XADD_ONCE = """
local existing = redis.call('HMGET', KEYS[3], 'id', 'body')
if existing[1] and existing[1] ~= ARGV[5] then
  return {0, existing[1], existing[2]}
end
local pairs = tonumber(ARGV[7])
local id = redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[1], '*', unpack(ARGV, 8 + pairs))
redis.call('HSET', KEYS[2], 'entry', id, unpack(ARGV, 8, 7 + pairs))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], 'id', ARGV[6], 'body', ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return {1, ARGV[6], ARGV[4]}
"""


@dataclass(frozen=True, slots=True)
class OnceOnly:
    """An Idempotency-Key as the enqueuer uses it: which shard (by the key's hash, so every
    proxy finds it), the key's fingerprint and its body's, how long it is kept, and the id
    of an earlier try it may replace (one whose deadline passed before any worker took it)."""

    fingerprint: str
    body_hash: str
    ttl_ms: int
    replaces: str = ""


@dataclass(frozen=True, slots=True)
class Placed:
    stream: str
    async_id: str
    # False: the key was there already; async_id and body_hash are those of the first request.
    created: bool = True
    body_hash: str = ""


class OnceEnqueuer:
    def __init__(self, enqueuer: Enqueuer, writer: NodeWriter,
                 other_shard_sets: Callable[[], Sequence[list[str]]] = lambda: ()) -> None:
        """``other_shard_sets``: the request streams of the other shard counts in use (during
        a change of REQUEST_STREAM_SHARDS), where a key may have been written."""
        self._enqueuer = enqueuer
        self._writer = writer
        self._reply_streams = enqueuer.reply_streams
        self._other_shard_sets = other_shard_sets
        self._policy = enqueuer.guard.policy

    def shard_of(self, fingerprint: str) -> str:
        """The request stream shard a key's request goes to (and is judged by)."""
        return _keys_shard(list(self._reply_streams), fingerprint)

    def enqueue(self, request: contract.WeatherRequest, minid: str, wait_seconds: float, kept: KeptResult,
                once: OnceOnly, prompt: bool = False) -> Placed:
        """Like Enqueuer.enqueue, on the shard the key maps to and only if the key is new."""
        return self._enqueuer.guarded(
            lambda deadline: self._enqueue_on_the_keys_shard(request, minid, deadline, kept, once, prompt),
            wait_seconds)

    def _enqueue_on_the_keys_shard(self, request: contract.WeatherRequest, minid: str, deadline: float,
                                   kept: KeptResult, once: OnceOnly, prompt: bool) -> Placed:
        earlier = self._written_under_another_count(once)
        if earlier is not None:
            return earlier
        stream = self.shard_of(once.fingerprint)
        shards = self._enqueuer.shards
        why_not = shards.cannot_take(stream)
        if why_not is not None:
            # Its record lives on this shard: no other may take it, and waiting here would only
            # hold the caller. Retry-After says when to ask again.
            raise NoShardAvailable(max(REPLICA_CHECK_SECONDS, shards.seconds_until_free(stream)),
                                   replicas_short=why_not == "replicas")
        async_id = contract.new_async_id(stream)
        key = contract.result_key(async_id) or ""
        request = dataclasses.replace(request, result_key=key, result_ttl_ms=kept.result_ttl_ms,
                                      reply_to=self._reply_streams[stream] if kept.wants_reply else "")
        record = contract.accepted_record(kept.subject, contract.now_ms())
        args: list[Any] = [minid, kept.record_ttl_ms, once.ttl_ms, once.body_hash, once.replaces, async_id,
                           len(record), *record]
        for name, value in request.to_fields().items():
            args += (name, value)
        keys = [contract.prompt_lane(stream) if prompt else stream, key,
                contract.idempotency_key(stream, once.fingerprint)]

        def add(pipe: Any) -> None:
            pipe.eval(_XADD_ONCE, len(keys), *keys, *args)

        policy = self._policy
        for attempt in range(policy.max_tries):
            result, = self._writer.execute([Routed(stream, add)])
            if not isinstance(result, BaseException):
                shards.succeeded(stream)
                created, first_id, body_hash = result[0]
                # A retry of a write that landed short of replicas finds its own id.
                return Placed(stream, first_id.decode(), bool(created) or first_id.decode() == async_id,
                              body_hash.decode())
            shards.failed(stream)
            if isinstance(result, ReplicasBehind):
                # On the primary, short of replicas: the key is there, and a repeat of the request
                # finds it. Whether the replica is gone or slow, its primary says (app.proxy.replicas).
                self._enqueuer.replicas_behind()
                raise NoShardAvailable(REPLICA_CHECK_SECONDS, replicas_short=True)
            if not isinstance(result, NotSent):
                raise result
            step = policy.base_seconds * 2 ** attempt
            if time.monotonic() + step >= deadline:
                break
            time.sleep(step)
        raise NoShardAvailable(policy.base_seconds)

    def find(self, fingerprint: str) -> Placed | None:
        """The request a key was first sent with, if any (a read only, on every shard count in
        use): a repeat is answered from it when the load would refuse a new request. None
        when the key is not there or cannot be read now."""
        streams = [list(self._reply_streams), *self._other_shard_sets()]
        items = []
        for shard_set in streams:
            key = contract.idempotency_key(_keys_shard(shard_set, fingerprint), fingerprint)
            items.append(Routed(key, _hmget(key)))
        for result in self._writer.execute(items):
            if isinstance(result, BaseException):
                continue
            first_id, body_hash = result[0]
            if first_id is not None:
                return Placed("", first_id.decode(), False, (body_hash or b"").decode())
        return None

    def _written_under_another_count(self, once: OnceOnly) -> Placed | None:
        """The key as proxies of another shard count wrote it, while the count changes: a
        read before the write, so only two first requests racing across counts can both run."""
        items = []
        for streams in self._other_shard_sets():
            stream = _keys_shard(streams, once.fingerprint)
            key = contract.idempotency_key(stream, once.fingerprint)
            items.append(Routed(key, _hmget(key)))
        for result in self._writer.execute(items) if items else []:
            if isinstance(result, BaseException):
                raise result
            first_id, body_hash = result[0]
            if first_id is not None and first_id.decode() != once.replaces:
                return Placed("", first_id.decode(), False, body_hash.decode())
        return None


def _keys_shard(streams: list[str], fingerprint: str) -> str:
    return streams[int(fingerprint[:8], 16) % len(streams)]


def _hmget(key: str) -> Any:
    def add(pipe: Any) -> None:
        pipe.hmget(key, "id", "body")
    return add
