"""A live terminal view of the queue and the services: `make monitor`.

Works against the local Redis and services, or a cluster's through
`kubectl port-forward` (see the README, "Monitoring").
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field

import redis
import requests
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from app.shared import contract
from app.shared.connections import RedisClient
from app.shared.settings import CommonSettings
from app.shared.shard_sets import RETIRE_AFTER_ANNOUNCEMENTS, ShardSetRegistry

CIRCUIT = {0: "closed", 1: "half-open", 2: "open"}


@dataclass
class ShardRow:
    stream: str
    length: int | None = None
    dead_letters: int | None = None
    lag: int | None = None
    pending: int | None = None


@dataclass
class ShardSetRow:
    shards: int
    announced_seconds_ago: float
    # Announced within the retirement window: proxies write it. Else workers retire it once drained.
    written: bool


@dataclass
class Snapshot:
    shards: list[ShardRow] = field(default_factory=list)
    # The shard counts proxies announced (app.shared.shard_sets); more than one while REQUEST_STREAM_SHARDS changes.
    shard_sets: list[ShardSetRow] = field(default_factory=list)
    # Per consumer name, over every shard: pending entries and the shortest idle time (ms).
    consumers: dict[str, tuple[int, int]] = field(default_factory=dict)
    services: list[tuple[str, str, dict[str, float] | None]] = field(default_factory=list)
    redis_error: str | None = None


def scrape(url: str) -> dict[str, float] | None:
    try:
        text = requests.get(url.rstrip("/") + "/metrics", timeout=2).text
    except requests.RequestException:
        return None
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("weather_") and not sample.labels:
                values[sample.name] = sample.value
    return values


def _read_shard(client: RedisClient, stream: str, group: str, consumers: dict[str, tuple[int, int]]) -> ShardRow:
    row = ShardRow(stream, client.xlen(stream), client.xlen(contract.dead_letter_stream(stream)))
    if not client.exists(stream):
        if stream.endswith(contract.PROMPT_LANE_SUFFIX):
            row.lag = row.pending = 0  # no lane yet: nothing waits in it
        return row
    info = next((g for g in client.xinfo_groups(stream) if g["name"] == group.encode()), None)
    if info is None:
        return row
    row.lag, row.pending = info.get("lag"), info.get("pending")
    for consumer in client.xinfo_consumers(stream, group):
        name = consumer["name"].decode()
        pending, idle = consumers.get(name, (0, consumer["idle"]))
        consumers[name] = (pending + consumer["pending"], min(idle, consumer["idle"]))
    return row


def take_snapshot(client: RedisClient, streams: list[str], group: str, services: list[tuple[str, str]],
                  registry: ShardSetRegistry | None = None, retire_after_ms: int = 0) -> Snapshot:
    snapshot = Snapshot()
    try:
        if registry is not None:
            announced = registry.announced()
            for shards, last_ms in sorted(announced.last_ms.items()):
                snapshot.shard_sets.append(ShardSetRow(shards, (announced.now_ms - last_ms) / 1000,
                                                       not announced.stale(shards, retire_after_ms)))
                streams = [*streams, *(s for s in registry.streams(shards) if s not in streams)]
        # Each shard and its prompt lane (where requests of callers within their share wait).
        queues = [queue for stream in streams for queue in (stream, contract.prompt_lane(stream))]
        snapshot.shards = [_read_shard(client, queue, group, snapshot.consumers) for queue in queues]
    except redis.RedisError as error:
        snapshot.redis_error = f"{type(error).__name__}: {error}"
    snapshot.services = [(kind, url, scrape(url)) for kind, url in services]
    return snapshot


def _text(value: int | None) -> str:
    return "?" if value is None else str(value)


def render(snapshot: Snapshot, where: str, group: str) -> Group:
    queue = Table(title=f"Redis {where} — group {group}", expand=False)
    for column in ("stream", "lag", "pending", "entries", "dead letters"):
        queue.add_column(column, justify="right" if column != "stream" else "left")
    if snapshot.redis_error:
        queue.add_row(f"[red]{snapshot.redis_error}[/red]", "", "", "", "")
    for row in snapshot.shards:
        queue.add_row(row.stream, _text(row.lag), _text(row.pending), _text(row.length), _text(row.dead_letters))
    if len(snapshot.shards) > 1:
        def total(values: list[int | None]) -> str:
            return "?" if None in values else str(sum(v for v in values if v is not None))
        shards = snapshot.shards
        count = sum(1 for r in shards if not r.stream.endswith(contract.PROMPT_LANE_SUFFIX))
        queue.add_row(f"all {count} shard{'s' if count != 1 else ''}", total([r.lag for r in shards]),
                      total([r.pending for r in shards]), total([r.length for r in shards]),
                      total([r.dead_letters for r in shards]))

    sets = Table(title="Shard sets announced by proxies")
    for column in ("shards", "announced", "state"):
        sets.add_column(column, justify="right" if column != "state" else "left")
    for item in snapshot.shard_sets:
        sets.add_row(str(item.shards), f"{item.announced_seconds_ago:.1f} s ago",
                     "written" if item.written else "[yellow]no proxy writes it: retired once drained[/yellow]")

    consumers = Table(title="Consumers")
    for column in ("consumer", "pending", "idle"):
        consumers.add_column(column, justify="right" if column != "consumer" else "left")
    for name, (pending, idle_ms) in sorted(snapshot.consumers.items()):
        consumers.add_row(name, str(pending), f"{idle_ms / 1000:.1f} s")

    services = Table(title="Services")
    for column in ("service", "url", "circuit", "terminals", "in flight", "redis"):
        services.add_column(column)
    for kind, url, metrics in snapshot.services:
        if metrics is None:
            services.add_row(kind, url, "[red]unreachable[/red]", "", "", "")
            continue
        state = metrics.get(f"weather_{kind}_circuit_state")
        terminals = ""
        if kind == "worker":
            active = metrics["weather_worker_terminals_active"]
            terminals = f"{active:g}/{metrics['weather_worker_terminals_configured']:g}"
        inflight = f"{metrics.get('weather_proxy_inflight_requests', 0):g}" if kind == "proxy" else ""
        up = metrics.get(f"weather_{kind}_redis_up")
        services.add_row(kind, url, CIRCUIT.get(int(state), "?") if state is not None else "?", terminals, inflight,
                         "up" if up == 1 else "down")
    return Group(queue, *([sets] if len(snapshot.shard_sets) > 1 else []), consumers, services)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.monitor", description=__doc__)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--redis-password", default=os.environ.get("REDIS_PASSWORD"))
    parser.add_argument("--stream", default=os.environ.get("REQUEST_STREAM", contract.DEFAULT_REQUEST_STREAM))
    parser.add_argument("--shards", type=int, default=int(os.environ.get("REQUEST_STREAM_SHARDS", "1")),
                        help="REQUEST_STREAM_SHARDS of the services (default: from the environment, else 1)")
    parser.add_argument("--group", default=os.environ.get("CONSUMER_GROUP", contract.DEFAULT_CONSUMER_GROUP))
    parser.add_argument("--proxy", action="append",
                        help="proxy metrics base URL, its METRICS_PORT (repeatable); default http://127.0.0.1:9101")
    parser.add_argument("--worker", action="append", help="worker metrics URL (repeatable); default http://127.0.0.1:9100")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    args = parser.parse_args(argv)

    # The services' own settings decide the topology and the keys (REDIS_SENTINELS,
    # REDIS_CLUSTER and the rest from the environment).
    settings = CommonSettings(redis_url=args.redis_url, redis_password=args.redis_password,
                              request_stream=args.stream, request_stream_shards=args.shards)
    client = settings.topology.client(client_name="monitor")
    registry = ShardSetRegistry(client, settings.request_stream, settings.topology.hash_tagged)
    retire_after_ms = int(RETIRE_AFTER_ANNOUNCEMENTS * settings.shard_set_announce_seconds * 1000)
    services = [("proxy", url) for url in args.proxy or ["http://127.0.0.1:9101"]]
    services += [("worker", url) for url in args.worker or ["http://127.0.0.1:9100"]]
    console = Console()

    def frame() -> Group:
        snapshot = take_snapshot(client, settings.request_streams, args.group, services, registry, retire_after_ms)
        return render(snapshot, settings.topology.describe(), args.group)

    if args.once:
        console.print(frame())
        return 0
    with Live(frame(), console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(args.interval)
                live.update(frame())
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
