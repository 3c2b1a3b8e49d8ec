"""Files a training run leaves in its run directory: metrics.csv, training_curves.png, summary.json."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Sequence

LEADING = ("epoch", "train_loss")
TRAILING = ("seconds", "examples_per_s", "steps", "best_epoch", "stop")


def _metric_order(key: str) -> tuple:
    """valid_recall@k, valid_hr@k, valid_ndcg@k (each by k), then sampled metrics, then the rest."""
    m = re.fullmatch(r"valid_(recall|hr|ndcg)@(\d+)", key)
    if m:
        return (0, ("recall", "hr", "ndcg").index(m.group(1)), int(m.group(2)))
    if key.startswith("valid_sampled_"):
        return (1, key, 0)
    return (2, key, 0)


def metrics_columns(history: Sequence[dict]) -> list[str]:
    """Column order of metrics.csv: epoch, train_loss, valid metrics, timing, bookkeeping."""
    keys = {k for row in history for k in row}
    middle = sorted((k for k in keys if k not in LEADING and k not in TRAILING), key=_metric_order)
    return [k for k in LEADING if k in keys] + middle + [k for k in TRAILING if k in keys]


def write_metrics_csv(history: Sequence[dict], path: str | Path) -> Path:
    """One row per epoch (floats with 6 significant digits). Returns the path."""
    path = Path(path)
    cols = metrics_columns(history)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for row in history:
            w.writerow([_fmt(row.get(c)) for c in cols])
    return path


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def plot_training_curves(history: Sequence[dict], path: str | Path, monitor: str) -> Path:
    """Two panels over epochs: train loss; validation Recall@k (every k) and NDCG@10.

    Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [row.get("train_loss", math.nan) for row in history], marker="o")
    ax1.set(title="training loss", xlabel="epoch", ylabel="loss")
    for key in [k for k in metrics_columns(history) if re.fullmatch(r"valid_(recall@\d+|ndcg@10)", k)]:
        style = "-" if key == monitor else "--"
        ax2.plot(epochs, [row.get(key, math.nan) for row in history], style, marker="o", label=key[6:])
    scored = [row for row in history if monitor in row]
    if scored:
        best = max(scored, key=lambda row: row[monitor])["epoch"]
        ax2.axvline(best, color="grey", linestyle=":", label=f"best epoch ({best})")
    ax2.set(title="validation", xlabel="epoch", ylabel="metric")
    ax2.legend(loc="best")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(path))
    return Path(path)


def write_summary(path: str | Path, summary: dict) -> Path:
    """JSON summary of the run (best epoch, metrics, paths)."""
    Path(path).write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return Path(path)
