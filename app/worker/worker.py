"""The worker's start and stop: terminal greenlets, one reader per request stream shard
(app.worker.reading), what a terminal does with an entry (app.worker.handling), and
housekeeping. On stop the readers read no more and the terminals finish what they hold
within SHUTDOWN_GRACE_SECONDS; what is still unfinished stays pending in the group,
where another worker claims it."""

from __future__ import annotations

import logging
import random
import threading
import time

from app.shared.connections import RedisClient
from app.shared.replication import ReplicaWait
from app.shared.resilience import RedisGuard
from app.shared.routing import NodeWriter
from app.shared.runtime import RedisRuntime
from app.worker import metrics
from app.worker.consumers import ConsumerJanitor
from app.worker.handling import Handler
from app.worker.housekeeping import Housekeeping
from app.worker.outcomes import OutcomeWriter
from app.worker.reading import ShardReader
from app.worker.settings import WorkerSettings
from app.worker.terminals import Terminals

log = logging.getLogger("app.worker")


class Worker:
    def __init__(self, terminals: Terminals, readers: list[ShardReader], handler: Handler,
                 housekeeping: Housekeeping, guard: RedisGuard, stopping: threading.Event, *,
                 consumer: str, group: str, read_block_ms: int, shutdown_grace_seconds: float) -> None:
        self.terminals = terminals
        self.readers = readers
        self.handler = handler
        self.housekeeping = housekeeping
        self.guard = guard
        self.consumer = consumer
        self._stopping = stopping
        self._group = group
        self._read_block_ms = read_block_ms
        self._shutdown_grace_seconds = shutdown_grace_seconds
        self._threads: list[threading.Thread] = []

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def groups_ready(self) -> bool:
        return all(reader.group_ready for reader in self.readers)

    @property
    def processed(self) -> int:
        return self.handler.processed

    @property
    def last_loop_monotonic(self) -> float:
        """When the slowest reader last went round its loop (a wedged one shows here)."""
        return min(reader.last_loop for reader in self.readers)

    def ensure_groups(self) -> None:
        for reader in self.readers:
            if not reader.group_ready:
                reader.ensure_group()

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stop requested: no new entries will be read")
            self._stopping.set()

    def run(self) -> None:
        metrics.TERMINALS_CONFIGURED.set(self.terminals.count)
        for number in range(self.terminals.count):
            thread = threading.Thread(target=self._terminal, args=(random.Random(),), name=f"terminal-{number}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        threading.Thread(target=self.housekeeping.run, name="housekeeping", daemon=True).start()
        log.info("worker started", extra={"consumer": self.consumer, "group": self._group,
                                          "streams": [reader.stream for reader in self.readers],
                                          "terminals": self.terminals.count})
        others = [threading.Thread(target=reader.run, name=f"reader-{reader.stream}", daemon=True)
                  for reader in self.readers[1:]]
        for reader in others:
            reader.start()
        self.readers[0].run()
        for reader in others:
            reader.join(timeout=self._read_block_ms / 1000 + 5)
        self._drain()

    def _terminal(self, rng: random.Random) -> None:
        while (delivery := self.terminals.next_delivery()) is not None:
            metrics.TERMINALS_ACTIVE.inc()
            try:
                self.handler.handle(delivery, rng)
            except Exception:  # a terminal must survive any single entry
                log.exception("unexpected error handling an entry", extra={"entry_id": delivery.entry_id.decode()})
            finally:
                self.terminals.finished(delivery)
                metrics.TERMINALS_ACTIVE.dec()

    def _drain(self) -> None:
        deadline = time.monotonic() + self._shutdown_grace_seconds
        self.terminals.close()
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        unfinished = sum(thread.is_alive() for thread in self._threads)
        # Entries still in work stay pending in the group, where another worker claims them.
        log.info("worker stopped", extra={"processed": self.processed, "unfinished_terminals": unfinished})


def create_worker(settings: WorkerSettings, client: RedisClient, runtime: RedisRuntime) -> Worker:
    """The worker and its collaborators, each given the values it uses."""
    stopping = threading.Event()
    terminals = Terminals(settings.worker_terminals)
    guard, topology = runtime.guard, runtime.topology
    unconfirmed = NodeWriter(topology, client, ReplicaWait(0, 0))
    writer = OutcomeWriter(NodeWriter(topology, client, runtime.replica_wait), unconfirmed,
                           settings.consumer_group, settings.dead_letter_maxlen)
    handler = Handler(writer, guard, consumer=settings.consumer_name, max_deliveries=settings.max_deliveries,
                      processing_delay=settings.processing_delay_ms,
                      reconnect_max_seconds=settings.redis_reconnect_max_seconds)
    streams = settings.request_streams
    readers = [
        ShardReader(client, runtime.shard_guard("worker", stream), terminals, stream, group=settings.consumer_group,
                    consumer=settings.consumer_name, read_block_ms=settings.read_block_ms,
                    claim_idle_seconds=settings.claim_idle_seconds,
                    reconnect_max_seconds=settings.redis_reconnect_max_seconds, shares_terminals=len(streams) > 1,
                    stopping=stopping, on_group_lost=writer.ttl.forget_all)  # the reply streams went with it
        for stream in streams
    ]
    housekeeping = Housekeeping(
        client, unconfirmed, guard, ConsumerJanitor(client, settings.consumer_group, settings.consumer_name), streams,
        group=settings.consumer_group, consumer_expiry_seconds=settings.consumer_expiry_seconds,
        groups_ready=lambda: worker.groups_ready, stopping=stopping,
    )
    worker = Worker(terminals, readers, handler, housekeeping, guard, stopping, consumer=settings.consumer_name,
                  group=settings.consumer_group, read_block_ms=settings.read_block_ms,
                  shutdown_grace_seconds=settings.shutdown_grace_seconds)
    return worker
