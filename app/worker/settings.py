"""The worker's settings, read from the environment and validated at start."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from app.shared.settings import CommonSettings, Port


@dataclass(frozen=True, slots=True)
class DelayRange:
    """Simulated work time: uniform between low and high milliseconds."""

    low_ms: int
    high_ms: int

    @classmethod
    def parse(cls, text: str) -> DelayRange:
        low_text, sep, high_text = text.strip().partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if sep else low
        except ValueError:
            raise ValueError('must be milliseconds like "150" or a range like "100-500"') from None
        if low < 0 or high < low or high > 600_000:
            raise ValueError("must satisfy 0 <= low <= high <= 600000")
        return cls(low, high)


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(CommonSettings):
    consumer_name: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\s]+$")] = Field(
        default_factory=default_consumer_name
    )
    worker_terminals: Annotated[int, Field(ge=1, le=1000)] = 5
    processing_delay_ms: Annotated[DelayRange, NoDecode] = DelayRange(100, 500)
    metrics_port: Port = 9100
    shutdown_grace_seconds: Annotated[float, Field(gt=0, le=3600)] = 25.0
    # Entries already in this consumer's hands wait at most this long for a free terminal.
    read_block_ms: Annotated[int, Field(ge=10, le=60_000)] = 2000
    dead_letter_maxlen: Annotated[int, Field(ge=100)] = 100_000
    # Entries pending this long with a consumer are taken over by a live worker: how long a
    # dead worker's entries wait. Work may take longer: its worker renews them (below).
    claim_idle_seconds: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    # How often a worker resets the idle time of the entries it works on (app.worker.leases);
    # unset: a third of CLAIM_IDLE_SECONDS. At most half of it, so one late round is survived.
    lease_renew_seconds: Annotated[float, Field(gt=0, le=43_200)] | None = None
    # Deliveries after which an entry is dead-lettered instead of processed again.
    max_deliveries: Annotated[int, Field(ge=1, le=1000)] = 5
    # Consumers idle this long with nothing pending are removed from the group.
    consumer_expiry_seconds: Annotated[float, Field(gt=0, le=30 * 86_400)] = 300.0

    @property
    def lease_renew_interval(self) -> float:
        return self.lease_renew_seconds or self.claim_idle_seconds / 3

    @field_validator("processing_delay_ms", mode="before")
    @classmethod
    def _parse_delay(cls, value: object) -> object:
        if isinstance(value, (str, int)):
            return DelayRange.parse(str(value))
        return value

    @model_validator(mode="after")
    def _consistent_timings(self) -> WorkerSettings:
        if self.read_block_ms / 1000 >= self.shutdown_grace_seconds:
            raise ValueError("READ_BLOCK_MS must be shorter than SHUTDOWN_GRACE_SECONDS")
        if self.lease_renew_seconds is not None and self.lease_renew_seconds * 2 > self.claim_idle_seconds:
            raise ValueError("LEASE_RENEW_SECONDS must be at most half of CLAIM_IDLE_SECONDS")
        if self.consumer_expiry_seconds <= self.claim_idle_seconds:
            raise ValueError("CONSUMER_EXPIRY_SECONDS must exceed CLAIM_IDLE_SECONDS")
        if self.worker_terminals < self.request_stream_shards:
            # Every shard's reader waits for entries holding one idle terminal.
            raise ValueError("WORKER_TERMINALS must be at least REQUEST_STREAM_SHARDS")
        return self
