"""What `python -m tools.loadtest` shows of a run: the summary table, and the report file
(a latency histogram and throughput over time, as PNG or HTML embedding it)."""

from __future__ import annotations

import base64
import io
from collections import Counter
from pathlib import Path

from rich.table import Table

from tools.load_runs import LoadResult


def summary_table(result: LoadResult, title: str) -> Table:
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for status, number in sorted(Counter(str(s.status or "no answer") for s in result.samples).items()):
        table.add_row(f"status {status}", str(number))
    figures = result.summary()
    if result.refused:
        table.add_row("refused (503 with Retry-After; not failures)", str(figures["refused"]))
        table.add_row("refused p99 latency (ms)", f"{figures['refused_p99_ms']:.1f}")
        table.add_row("Retry-After median / max (s)",
                      f"{figures['retry_after_median_s']:g} / {figures['retry_after_max_s']:g}")
    table.add_row("requests/s", f"{figures['requests_per_second']:.1f}")
    table.add_row("200 answers/s", f"{figures['ok_per_second']:.1f}")
    for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
        table.add_row(key.replace("_ms", " latency (ms, 200s)"), f"{figures[key]:.1f}")
    examples: dict[str, int] = {}
    for sample in result.failed:
        examples[sample.error or "?"] = examples.get(sample.error or "?", 0) + 1
    for error, number in list(examples.items())[:5]:
        table.add_row(f"error: {error[:60]}", str(number))
    if any(sample.send_lag for sample in result.samples):
        table.add_row("send lag p99 (ms, this tool behind schedule)", f"{figures['send_lag_p99_ms']:.1f}")
    return table


def write_report(result: LoadResult, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(13, 4.5))
    latency.hist([s.seconds * 1000 for s in result.ok] or [0], bins=60)
    latency.set_title("Latency of 200 answers")
    latency.set_xlabel("ms")
    latency.set_ylabel("requests")
    per_second = Counter(int(s.started + s.seconds) for s in result.samples)
    failed_per_second = Counter(int(s.started + s.seconds) for s in result.failed)
    refused_per_second = Counter(int(s.started + s.seconds) for s in result.refused)
    seconds = list(range(max(per_second, default=0) + 1))
    throughput.plot(seconds, [per_second.get(t, 0) for t in seconds], label="answered")
    throughput.plot(seconds, [failed_per_second.get(t, 0) for t in seconds], label="failed")
    if refused_per_second:
        throughput.plot(seconds, [refused_per_second.get(t, 0) for t in seconds], label="refused (503)")
    throughput.set_title("Throughput")
    throughput.set_xlabel("second of the run")
    throughput.set_ylabel("requests/s")
    throughput.legend()
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    if path.suffix == ".png":
        path.write_bytes(buffer.getvalue())
        return
    rows = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in result.summary().items())
    encoded = base64.b64encode(buffer.getvalue()).decode()
    path.write_text(f"<!doctype html><meta charset=utf-8><title>{title}</title><h1>{title}</h1>"
                    f"<table>{rows}</table><img alt='latency and throughput' src='data:image/png;base64,{encoded}'>")
