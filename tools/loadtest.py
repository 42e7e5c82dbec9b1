"""Load test for the proxy: python -m tools.loadtest --url http://127.0.0.1:8080

Checks /readyz first, sends POST /WeatherForecast/city, shows a progress bar, and ends
with a summary table. Exits 1 when any request failed, 2 when the service is not ready.
`--report` writes a latency histogram and throughput-over-time plot (.png, or .html).

Which mode answers which question:
  --rate R            open loop: R requests start every second on a fixed schedule, whatever
                      the answers. "What latency do users see at R req/s, and what happens
                      past capacity?" Latency counts from each request's scheduled start, so
                      queueing (in the service or in this tool) shows instead of hiding.
  --mode concurrent   closed loop: N clients, each sends its next request when its last one
                      answered. "How much can the service do?" It slows down with the service,
                      so its latencies hide queueing; use it for throughput, not latency.
  --mode sequential   one client, one request at a time: the unloaded round trip.
  --urgency N         Priority: u=N on each request (open loop); under overload the least
                      urgent are refused first. Refusals (503 with Retry-After) are counted
                      apart from failures: they are the service's answer to overload.
  --async             each request asks `Prefer: respond-async` and polls its Location
                      (every 50 ms) until the result: latency counts to the result.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tools.load_report import summary_table, write_report
from tools.load_runs import check_ready, run_load, run_open_loop


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked; exits 2 with a message on a bad one."""
    parser = argparse.ArgumentParser(prog="python -m tools.loadtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the proxy's base URL")
    parser.add_argument("--mode", choices=["sequential", "concurrent"], default="concurrent",
                        help="closed loop (ignored with --rate)")
    parser.add_argument("--rate", type=float, help="open loop: requests started per second on a fixed schedule")
    parser.add_argument("--count", type=int, default=1000, help="requests to send (ignored with --duration)")
    parser.add_argument("--concurrency", type=int, default=50, help="concurrent clients in concurrent mode")
    parser.add_argument("--timeout", type=float, default=35.0, help="seconds one request may take")
    parser.add_argument("--duration", type=float, help="send for this many seconds instead of --count")
    parser.add_argument("--report", type=Path, help="write a report: .png or .html")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
    parser.add_argument("--async", dest="asynchronous", action="store_true",
                        help="submit with Prefer: respond-async and poll each result")
    parser.add_argument("--urgency", type=int, choices=range(8), metavar="0-7",
                        help="open loop: send Priority: u=N (RFC 9218) with every request")
    args = parser.parse_args(argv)
    duration_bad = args.duration is not None and args.duration <= 0
    rate_bad = args.rate is not None and args.rate <= 0
    if args.count < 1 or args.concurrency < 1 or args.timeout <= 0 or duration_bad or rate_bad:
        parser.error("--count, --concurrency, --timeout, --duration and --rate must be positive")
    if args.report and args.report.suffix not in (".png", ".html"):
        parser.error("--report must end in .png or .html")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    concurrency = 1 if args.mode == "sequential" else args.concurrency
    console = Console(stderr=True)

    problem = asyncio.run(check_ready(args.url))
    if problem:
        console.print(f"[red]not ready[/red]: {args.url} {problem}")
        return 2
    if args.rate:
        title = f"open loop, {args.rate:g} req/s, {args.url}"
    else:
        title = f"{args.mode}, {concurrency} client(s), {args.url}"
    if args.asynchronous:
        title += ", async (submit and poll)"
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=args.no_progress, transient=True) as progress:
        if args.rate:
            result = asyncio.run(run_open_loop(args.url, rate=args.rate, count=args.count, timeout=args.timeout,
                                               duration=args.duration, progress=progress,
                                               asynchronous=args.asynchronous,
                                               urgency=lambda index: args.urgency))
        else:
            result = asyncio.run(run_load(args.url, count=args.count, concurrency=concurrency,
                                          timeout=args.timeout, duration=args.duration, progress=progress,
                                          asynchronous=args.asynchronous))
    Console().print(summary_table(result, title))
    if args.report:
        write_report(result, args.report, title)
        console.print(f"report written to {args.report}")
    return 1 if result.failed or not result.samples else 0


if __name__ == "__main__":
    sys.exit(main())
