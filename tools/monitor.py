"""A live terminal view of the queue and the services: `make monitor`.

Works against the local Redis and services, or a cluster's through
`kubectl port-forward` (see the README, "Monitoring").
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from typing import Any

import redis
import requests
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from app.shared import contract
from app.shared.connections import RedisConnector
from app.shared.settings import CommonSettings

CIRCUIT = {0: "closed", 1: "half-open", 2: "open"}


@dataclass
class Snapshot:
    stream_length: int | None = None
    dead_letters: int | None = None
    groups: list[dict[str, Any]] = field(default_factory=list)
    consumers: list[dict[str, Any]] = field(default_factory=list)
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


def take_snapshot(client: redis.Redis, stream: str, group: str, services: list[tuple[str, str]]) -> Snapshot:
    snapshot = Snapshot()
    try:
        snapshot.stream_length = client.xlen(stream)
        snapshot.dead_letters = client.xlen(contract.dead_letter_stream(stream))
        if client.exists(stream):
            snapshot.groups = client.xinfo_groups(stream)
            if any(g["name"] == group.encode() for g in snapshot.groups):
                snapshot.consumers = client.xinfo_consumers(stream, group)
    except redis.RedisError as error:
        snapshot.redis_error = f"{type(error).__name__}: {error}"
    snapshot.services = [(kind, url, scrape(url)) for kind, url in services]
    return snapshot


def render(snapshot: Snapshot, where: str, stream: str) -> Group:
    queue = Table(title=f"Redis {where} — stream {stream}", expand=False)
    for column in ("group", "lag", "pending", "entries", "dead letters"):
        queue.add_column(column, justify="right" if column != "group" else "left")
    if snapshot.redis_error:
        queue.add_row(f"[red]{snapshot.redis_error}[/red]", "", "", "", "")
    for info in snapshot.groups or [{"name": b"-", "lag": None, "pending": None}]:
        queue.add_row(info["name"].decode(), str(info.get("lag", "?")), str(info.get("pending", "?")),
                      str(snapshot.stream_length), str(snapshot.dead_letters))

    consumers = Table(title="Consumers")
    for column in ("consumer", "pending", "idle"):
        consumers.add_column(column, justify="right" if column != "consumer" else "left")
    for consumer in snapshot.consumers:
        consumers.add_row(consumer["name"].decode(), str(consumer["pending"]), f"{consumer['idle'] / 1000:.1f} s")

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
    return Group(queue, consumers, services)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.monitor", description=__doc__)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--redis-password", default=os.environ.get("REDIS_PASSWORD"))
    parser.add_argument("--stream", default=os.environ.get("REQUEST_STREAM", contract.DEFAULT_REQUEST_STREAM))
    parser.add_argument("--group", default=os.environ.get("CONSUMER_GROUP", contract.DEFAULT_CONSUMER_GROUP))
    parser.add_argument("--proxy", action="append", help="proxy base URL (repeatable); default http://127.0.0.1:8080")
    parser.add_argument("--worker", action="append", help="worker metrics URL (repeatable); default http://127.0.0.1:9100")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    args = parser.parse_args(argv)

    # The services' own settings decide the topology (REDIS_SENTINELS and the rest from the environment).
    settings = CommonSettings(redis_url=args.redis_url, redis_password=args.redis_password)
    connector = RedisConnector(settings)
    client = connector.client(client_name="monitor")
    services = [("proxy", url) for url in args.proxy or ["http://127.0.0.1:8080"]]
    services += [("worker", url) for url in args.worker or ["http://127.0.0.1:9100"]]
    console = Console()

    def frame() -> Group:
        return render(take_snapshot(client, args.stream, args.group, services), connector.describe(), args.stream)

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
