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
from collections.abc import Callable

from app.shared import contract
from app.shared.connections import RedisClient
from app.shared.loops import Loops
from app.shared.replication import ReplicaWait
from app.shared.resilience import RedisGuard
from app.shared.routing import NodeWriter
from app.shared.runtime import RedisRuntime
from app.shared.shard_sets import ShardSetRegistry
from app.worker import metrics
from app.worker.consumers import ConsumerJanitor
from app.worker.drain import DrainMeter, DrainPublisher
from app.worker.handling import Handler
from app.worker.housekeeping import Housekeeping
from app.worker.leases import LeaseKeeper
from app.worker.outcomes import OutcomeWriter
from app.worker.reading import ShardReader
from app.worker.settings import WorkerSettings
from app.worker.shard_sets import ShardSetFollower
from app.worker.terminals import Terminals

log = logging.getLogger("app.worker")


class Worker:
    def __init__(self, terminals: Terminals, new_reader: Callable[[str], ShardReader], streams: list[str],
                 handler: Handler, background: dict[str, Callable[[], None]], guard: RedisGuard,
                 stopping: threading.Event, *, consumer: str, group: str, read_block_ms: int,
                 shutdown_grace_seconds: float) -> None:
        self.terminals = terminals
        self.handler = handler
        self.guard = guard
        self.consumer = consumer
        self._new_reader = new_reader
        self._background = background
        # Every loop but the terminals' (which survive any one entry themselves).
        self.loops = Loops(lambda name: metrics.LOOP_RESTARTS.labels(name).inc())
        self._stopping = stopping
        self._group = group
        self._read_block_ms = read_block_ms
        self._shutdown_grace_seconds = shutdown_grace_seconds
        self._threads: list[threading.Thread] = []
        # Readers come and go while the worker runs: a shard set announced by proxies is
        # read, a retired one is not (app.worker.shard_sets).
        self._readers: dict[str, ShardReader] = {}
        self._reader_threads: list[threading.Thread] = []
        self._readers_lock = threading.Lock()
        self._running = False
        self.read(streams)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def readers(self) -> list[ShardReader]:
        with self._readers_lock:
            return list(self._readers.values())

    @property
    def streams(self) -> list[str]:
        return [reader.stream for reader in self.readers]

    @property
    def queues(self) -> list[str]:
        """Every stream read: each shard's prompt lane and the shard."""
        return [stream for reader in self.readers for stream in reader.streams]

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

    def read(self, streams: list[str]) -> None:
        """Reads these streams too (those not read yet)."""
        with self._readers_lock:
            for stream in streams:
                if stream not in self._readers:
                    reader = self._readers[stream] = self._new_reader(stream)
                    if self._running:
                        self._start_reader(reader)
            self._share_terminals()

    def stop_reading(self, streams: list[str]) -> None:
        """Reads these streams no more; what was already read is finished as usual."""
        with self._readers_lock:
            for stream in streams:
                reader = self._readers.pop(stream, None)
                if reader is not None:
                    reader.retired.set()
            self._share_terminals()

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
        for name, loop in self._background.items():
            self.loops.start(name, loop)
        with self._readers_lock:
            self._running = True
            for reader in self._readers.values():
                self._start_reader(reader)
        log.info("worker started", extra={"consumer": self.consumer, "group": self._group,
                                          "streams": self.streams, "terminals": self.terminals.count})
        self._stopping.wait()
        for thread in self._reader_threads:
            thread.join(timeout=self._read_block_ms / 1000 + 5)
        self._drain()

    def _start_reader(self, reader: ShardReader) -> None:
        thread = self.loops.start(f"reader:{reader.stream}", reader.run)
        self._reader_threads = [*(t for t in self._reader_threads if t.is_alive()), thread]

    def _share_terminals(self) -> None:
        for reader in self._readers.values():
            reader.shares_terminals = len(self._readers) > 1

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
    writer = OutcomeWriter(NodeWriter(topology, client, runtime.replica_wait), unconfirmed, guard,
                           group=settings.consumer_group, consumer=settings.consumer_name,
                           dead_letter_maxlen=settings.dead_letter_maxlen,
                           reconnect_max_seconds=settings.redis_reconnect_max_seconds, hash_tagged=topology.hash_tagged)
    meter = DrainMeter(settings.worker_terminals)
    handler = Handler(writer, meter, consumer=settings.consumer_name, max_deliveries=settings.max_deliveries,
                      processing_delay=settings.processing_delay_ms)
    def new_reader(stream: str) -> ShardReader:
        return ShardReader(client, runtime.shard_guard("worker", stream), terminals, stream,
                           group=settings.consumer_group, consumer=settings.consumer_name,
                           read_block_ms=settings.read_block_ms, claim_idle_seconds=settings.claim_idle_seconds,
                           reconnect_max_seconds=settings.redis_reconnect_max_seconds, shares_terminals=False,
                           stopping=stopping, on_group_lost=writer.ttl.forget_all)  # the reply streams went with it

    housekeeping = Housekeeping(
        client, unconfirmed, guard, ConsumerJanitor(client, settings.consumer_group, settings.consumer_name),
        lambda: worker.queues, group=settings.consumer_group,
        consumer_expiry_seconds=settings.consumer_expiry_seconds, groups_ready=lambda: worker.groups_ready,
        stopping=stopping,
    )
    follower = ShardSetFollower(
        ShardSetRegistry(client, settings.request_stream, runtime.topology.hash_tagged), client,
        settings.request_stream_shards, group=settings.consumer_group,
        announce_seconds=settings.shard_set_announce_seconds, read=lambda streams: worker.read(streams),
        stop_reading=lambda streams: worker.stop_reading(streams), stopping=stopping,
    )
    leases = LeaseKeeper(client, guard, terminals, group=settings.consumer_group, consumer=settings.consumer_name,
                         renew_seconds=settings.lease_renew_interval)
    drain = DrainPublisher(client, meter, contract.drain_key(settings.request_stream), settings.consumer_name,
                           stopping)
    worker = Worker(terminals, new_reader, settings.request_streams, handler,
                    {"housekeeping": housekeeping.run, "shard-set-follower": follower.run, "leases": leases.run,
                     "drain": drain.run},
                    guard, stopping, consumer=settings.consumer_name, group=settings.consumer_group,
                    read_block_ms=settings.read_block_ms, shutdown_grace_seconds=settings.shutdown_grace_seconds)
    return worker
