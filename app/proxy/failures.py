"""Why a round trip brought no reply: plain exceptions of the domain, raised by
``RoundTrips`` and answered as HTTP problems by ``app.proxy.errors``."""

from __future__ import annotations


class RoundTripFailure(Exception):
    """A request that could not be answered with its reply."""


class Overloaded(RoundTripFailure):
    """This process already holds MAX_INFLIGHT_PER_PROCESS requests."""


class Shed(RoundTripFailure):
    """Refused by admission: the queue holds more than this request could wait through.
    ``retry_after`` in seconds; ``async_would_fit``: Prefer: respond-async would be accepted;
    ``reason`` and ``urgency`` as weather_proxy_shed_total counts it."""

    def __init__(self, expected_wait: float, retry_after: int, cold: bool, async_would_fit: bool,
                 reason: str = "wait", urgency: int = 3) -> None:
        super().__init__("no worker has drained the queue yet and it holds as much as may wait for one" if cold
                         else f"the queue holds about {expected_wait:.1f} s of work, more than this request "
                         "may wait")
        self.retry_after = retry_after
        self.async_would_fit = async_would_fit
        self.reason = reason
        self.urgency = urgency


class QueueUnavailable(RoundTripFailure):
    """The request could not be queued: Redis failed the tries, the breaker refuses them
    until Redis recovers (``breaker_open``), or no primary it may go to has the replicas
    REDIS_WAIT_REPLICAS asks for (``replicas_short``). ``retry_after`` is in seconds."""

    def __init__(self, retry_after: str, breaker_open: bool, replicas_short: bool = False) -> None:
        super().__init__("circuit open" if breaker_open else "replicas short" if replicas_short
                         else "queue unreachable")
        self.retry_after = retry_after
        self.breaker_open = breaker_open
        self.replicas_short = replicas_short


class NoReply(RoundTripFailure):
    """Queued, but no reply came before the request's deadline."""

    def __init__(self, timeout_seconds: float) -> None:
        super().__init__(f"no reply within {timeout_seconds:g} s")
        self.timeout_seconds = timeout_seconds


class WorkerFailed(RoundTripFailure):
    """The worker answered that it could not do the work."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class KeyReused(RoundTripFailure):
    """An Idempotency-Key sent again with another body."""


class InProgress(RoundTripFailure):
    """An Idempotency-Key sent again, asynchronously, while its first request is not done."""

    def __init__(self, async_id: str) -> None:
        super().__init__("the request with this Idempotency-Key is still queued or in work")
        self.async_id = async_id
