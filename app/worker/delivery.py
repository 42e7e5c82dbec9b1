"""One request stream entry handed to this worker, as it travels from a reader to a terminal."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Delivery:
    stream: str  # the request stream shard it came from, where it is acknowledged
    entry_id: bytes
    fields: dict[bytes, bytes]
    deliveries: int  # how many times the group has delivered it, this time included

    @property
    def key(self) -> tuple[str, bytes]:
        return self.stream, self.entry_id
