"""Async requests' results as any proxy process reads them: the record the proxy wrote with
the entry and the worker filled in, on the shard the id names."""

from __future__ import annotations

import logging

import redis

from app.proxy import metrics
from app.proxy.failures import QueueUnavailable
from app.shared import contract
from app.shared.connections import RedisClient
from app.shared.resilience import CircuitOpen, RedisGuard

log = logging.getLogger("app.proxy")

_FOUND = {found: metrics.RESULTS_READ.labels(found) for found in ("done", "pending", "missing")}


class Results:
    def __init__(self, client: RedisClient, guard: RedisGuard) -> None:
        self._client = client
        self._guard = guard

    def find(self, async_id: str, subject: str) -> contract.ResultRecord | None:
        """The record, or None when there is none for this caller: unknown, expired, or
        another subject's (which must look exactly like unknown)."""
        key = contract.result_key(async_id)
        record = None
        if key is not None:
            try:
                fields = self._guard.call(self._client.hgetall, key)
            except CircuitOpen:
                raise QueueUnavailable(self._guard.retry_after_header(), breaker_open=True) from None
            except redis.RedisError as error:
                log.warning("reading a result failed", extra={"error": repr(error)})
                raise QueueUnavailable("1", breaker_open=False) from None
            if fields:
                record = contract.ResultRecord.from_hash(async_id, fields)  # type: ignore[arg-type]
        if record is None or record.subject != subject:
            _FOUND["missing"].inc()
            return None
        _FOUND["done" if record.reply is not None else "pending"].inc()
        return record
