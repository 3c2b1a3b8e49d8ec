"""What a finished training run leaves in its run directory: ``best_checkpoint/``, metrics.csv,
training_curves.png and summary.json (:func:`write_run_artifacts`), and the :class:`FitResult`."""
from __future__ import annotations

import csv
import json
import logging
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from twotower import storage
from twotower.distributed.run import ResolvedRun

log = logging.getLogger(__name__)

LEADING = ("epoch", "train_loss")
TRAILING = ("seconds", "train_seconds", "examples_per_s", "data_wait_s", "steps", "best_epoch", "stop", "checkpoint_score")


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


@dataclass
class FitResult:
    """Outcome of :meth:`~twotower.distributed.trainer.TwoTowerTrainer.fit`.

    best_checkpoint: directory loadable by ``load_checkpoint`` (a copy, inside ``run_dir``).
    metrics: the reported metrics of the best epoch. history: reported metrics of every epoch.
    run_dir: directory holding the artifacts: a ``Path`` for a local ``storage_path``, the URI (``str``,
    as is ``best_checkpoint``) for a URI one. weight_digests: sha256 of each worker's final weights.
    resumed_after_epochs: completed epochs after which the run continued from its own checkpoint
    (worker failures); empty for an undisturbed run. skipped_files: ``{"path", "reason"}`` of the
    input files left out by ``skip_bad_files``. torch_threads: each worker's intra-op threads
    (``TrainConfig.torch_threads``).
    """

    best_checkpoint: Path | str
    metrics: dict
    history: list[dict]
    run_dir: Path | str
    weight_digests: list[str] = field(default_factory=list)
    stopped_early: bool = False
    ray_result_path: str = ""
    resumed_after_epochs: list[int] = field(default_factory=list)
    skipped_files: list[dict] = field(default_factory=list)
    torch_threads: list[int] = field(default_factory=list)


def write_run_artifacts(out: dict, run: ResolvedRun) -> FitResult:
    """Pick the best checkpoint (highest ``run.config.monitor_key``, earliest epoch on ties), copy it to
    ``RUN_DIR/best_checkpoint`` and write metrics.csv, the curves and summary.json. For a URI run
    directory they are written to a local temporary directory and uploaded, summary.json last.

    ``out``: what the fit task returned (``path``, ``best_checkpoints`` [(Checkpoint, metrics)],
    ``return_value`` of rank 0's loop). Raises RuntimeError when no checkpoint has the monitored metric.
    """
    if isinstance(run.run_dir, Path):
        return _write_local(out, run, run.run_dir)
    local = Path(tempfile.mkdtemp(prefix="twotower-run-"))
    try:
        result = _write_local(out, run, local)
        storage.upload_dir(local, run.run_dir, last="summary.json")
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return result


def _write_local(out: dict, run: ResolvedRun, local: Path) -> FitResult:
    """:func:`write_run_artifacts` into the local directory ``local``; the paths in the result and in
    summary.json are under ``run.run_dir`` (where they end up)."""
    key = run.config.monitor_key
    candidates = [(c, m) for c, m in out["best_checkpoints"] if key in m]
    if not candidates:
        raise RuntimeError(f"training reported no checkpoint with {key!r} (nothing to restore)")
    best_ckpt, best_metrics = max(candidates, key=lambda cm: (cm[1][key], -cm[1]["epoch"]))
    tmp = local / ".best_checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    best_ckpt.to_directory(str(tmp))
    shutil.rmtree(local / "best_checkpoint", ignore_errors=True)
    tmp.rename(local / "best_checkpoint")
    ret = out.get("return_value") or {}
    history = ret.get("history") or sorted((m for _, m in out["best_checkpoints"]), key=lambda m: m["epoch"])
    best = next((h for h in history if h["epoch"] == best_metrics["epoch"]), best_metrics)
    write_metrics_csv(history, local / "metrics.csv")
    plot_training_curves(history, local / "training_curves.png", key)
    shown = run.run_dir / "best_checkpoint" if isinstance(run.run_dir, Path) else \
        storage.join(run.run_dir, "best_checkpoint")
    result = FitResult(best_checkpoint=shown, metrics=dict(best),
                       history=list(history), run_dir=run.run_dir,
                       weight_digests=list(ret.get("weight_digests") or []),
                       stopped_early=bool(ret.get("stopped_early")), ray_result_path=str(out["path"]),
                       resumed_after_epochs=list(ret.get("resumed_after_epochs") or []),
                       skipped_files=[b.as_dict() for b in run.skipped],
                       torch_threads=list(ret.get("torch_threads") or []))
    if result.resumed_after_epochs:
        log.warning("training recovered from worker failure(s): resumed from the run's checkpoint after "
                    "epoch(s) %s", result.resumed_after_epochs)
    write_summary(local / "summary.json", {
        "dataset_dir": run.dataset_dir, "best_epoch": best["epoch"], "monitor": key,
        "best_metrics": best, "epochs_run": len(history), "stopped_early": result.stopped_early,
        "best_checkpoint": str(result.best_checkpoint), "ray_result_path": result.ray_result_path,
        "weight_digests": result.weight_digests, "resumed_after_epochs": result.resumed_after_epochs,
        "skipped_files": result.skipped_files, "torch_threads": result.torch_threads})
    return result
