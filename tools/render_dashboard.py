"""Draws the Grafana dashboard's panels from a Prometheus's data into a PNG.

No Grafana is needed: each panel's queries are run over a time range and plotted where
the dashboard's gridPos puts the panel. Used to make docs/dashboard.png from the data of
the real-Prometheus test (RENDER_DASHBOARD=docs/dashboard.png make test).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import requests

DASHBOARD = Path(__file__).resolve().parents[1] / "dashboards" / "redis-stream-demo.json"
VARIABLES = {"$namespace": ".*", "$pod": ".*", "$__rate_interval": "20s"}


Labels = dict[str, str]
Values = list[tuple[float, str]]


def _series(prometheus_url: str, expr: str, start: float, end: float, step: float) -> list[tuple[Labels, Values]]:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    response = requests.get(prometheus_url + "/api/v1/query_range",
                            params={"query": expr, "start": str(start), "end": str(end), "step": str(step)},
                            timeout=10)
    data = response.json()["data"]["result"]
    return [(item["metric"], item["values"]) for item in data]


def _legend(template: str, labels: Labels) -> str:
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text.replace("{{pod}}", "").replace("{{reason}}", "").strip() or "value"


def render(prometheus_url: str, start: float, end: float, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) / 8
    figure = plt.figure(figsize=(16, 3.2 * rows))
    figure.suptitle(f"{dashboard['title']} — drawn from the real-Prometheus test's data", fontsize=14)
    grid = figure.add_gridspec(math.ceil(rows), 24, hspace=0.55, wspace=2.5)
    step = max(1.0, (end - start) / 120)
    for panel in panels:
        pos = panel["gridPos"]
        axes = figure.add_subplot(grid[pos["y"] // 8, pos["x"]: pos["x"] + pos["w"]])
        axes.set_title(panel["title"], fontsize=10)
        for target in panel["targets"]:
            for labels, values in _series(prometheus_url, target["expr"], start, end, step):
                xs = [float(t) - start for t, _ in values]
                ys = [float(v) if v not in ("NaN", "+Inf", "-Inf") else float("nan") for _, v in values]
                axes.plot(xs, ys, label=_legend(target.get("legendFormat", ""), labels), linewidth=1.2)
        axes.set_xlabel("seconds", fontsize=8)
        axes.tick_params(labelsize=8)
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        if unit and unit != "short":
            axes.set_ylabel(unit, fontsize=8)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7, loc="upper left")
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=80, bbox_inches="tight")
    plt.close(figure)
