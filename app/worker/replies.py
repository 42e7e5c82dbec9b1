"""Writing an entry's outcome and acknowledging it in one step.

The append and the XACK run in one Lua script: atomic, ordered and one round
trip. If the append fails (out of memory, wrong key type) the script stops before
the XACK, so an entry is never acknowledged without its reply or dead letter.
"""

from __future__ import annotations

from typing import Any

import redis

from app.shared import contract

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
    def __init__(self, client: redis.Redis, request_stream: str, group: str, dead_letter_maxlen: int) -> None:
        self._script = client.register_script(_APPEND_AND_ACK)
        self._client = client
        self._request_stream = request_stream
        self._group = group
        self._dead_letter_stream = contract.dead_letter_stream(request_stream)
        self._dead_letter_maxlen = dead_letter_maxlen

    def reply_and_ack(self, reply_to: str, reply: contract.Reply, entry_id: bytes) -> None:
        self._script(
            keys=[reply_to, self._request_stream],
            args=[self._group, entry_id, contract.REPLY_STREAM_MAXLEN,
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
        self._script(
            keys=[self._dead_letter_stream, self._request_stream],
            args=[self._group, entry_id, self._dead_letter_maxlen, 0, *_flatten(letter)],
        )

    def ack(self, entry_id: bytes) -> None:
        self._client.xack(self._request_stream, self._group, entry_id)

