"""Writing an entry's outcome and acknowledging it in one step.

The append and the XACK run in one Lua script: atomic, ordered and one round
trip. If the append fails (out of memory, wrong key type) the script stops before
the XACK, so an entry is never acknowledged without its reply or dead letter.

With REDIS_WAIT_REPLICAS above 0 the script and one WAIT share a pipeline, so the
outcome is confirmed on the replicas in the same round trip.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.exceptions import NoScriptError

from app.shared import contract
from app.shared.replication import ReplicaWait

_APPEND_AND_ACK = """
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 5))
if tonumber(ARGV[4]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
"""


def _flatten(fields: dict[Any, Any]) -> list[Any]:
    flat: list[Any] = []
    for key, value in fields.items():
        flat.append(key)
        flat.append(value)
    return flat


class OutcomeWriter:
    def __init__(self, client: redis.Redis, request_stream: str, group: str, dead_letter_maxlen: int,
                 replicas: ReplicaWait) -> None:
        self._script = client.register_script(_APPEND_AND_ACK)
        self._replicas = replicas
        self._client = client
        self._request_stream = request_stream
        self._group = group
        self._dead_letter_stream = contract.dead_letter_stream(request_stream)
        self._dead_letter_maxlen = dead_letter_maxlen

    def reply_and_ack(self, reply_to: str, reply: contract.Reply, entry_id: bytes) -> None:
        self._append_and_ack(
            [reply_to, self._request_stream],
            [self._group, entry_id, contract.REPLY_STREAM_MAXLEN,
             contract.REPLY_STREAM_TTL_SECONDS, *_flatten(reply.to_fields())],
        )

    def dead_letter_and_ack(
        self, entry_id: bytes, fields: dict[bytes, bytes], reason: str, deliveries: int, consumer: str
    ) -> None:
        letter: dict[Any, Any] = dict(fields)
        letter[contract.FIELD_DLQ_REASON] = reason
        letter[contract.FIELD_DLQ_DELIVERIES] = deliveries
        letter[contract.FIELD_DLQ_SOURCE_ID] = entry_id
        letter[contract.FIELD_DLQ_CONSUMER] = consumer
        self._append_and_ack(
            [self._dead_letter_stream, self._request_stream],
            [self._group, entry_id, self._dead_letter_maxlen, 0, *_flatten(letter)],
        )

    def _append_and_ack(self, keys: list[Any], args: list[Any]) -> None:
        if not self._replicas.replicas:
            self._script(keys=keys, args=args)  # redis-py loads the script again on NOSCRIPT
            return
        try:
            self._confirmed(keys, args)
        except NoScriptError:
            # A primary promoted in a failover starts with an empty script cache.
            self._client.script_load(_APPEND_AND_ACK)
            self._confirmed(keys, args)

    def _confirmed(self, keys: list[Any], args: list[Any]) -> None:
        with self._client.pipeline(transaction=False) as pipe:
            pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            self._replicas.add_to(pipe)
            results = pipe.execute()
        self._replicas.check(results, self._client)

    def ack(self, entry_id: bytes) -> None:
        self._client.xack(self._request_stream, self._group, entry_id)

