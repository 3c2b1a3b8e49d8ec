"""``train`` command: distributed training on Ray (``TwoTowerTrainer``).

    python -m twotower.jobs.train --dataset datasets/ml-1m --num-workers 2 --epochs 10
    twotower train --dataset datasets/ml-1m --config my.yaml lr=0.001 temperature=0.1

Precedence: defaults < ``--config`` YAML < ``key=value`` overrides (positional or ``--set``) < flags
(``--num-workers``, ``--epochs``, ``--out``, ``--run-name``, ``--resume-from``, ``--max-failures``,
``--skip-bad-files``). Model keys may be
given bare (``temperature=0.1``) or as ``model.temperature=0.1``. Exit codes: 0 ok, 2 bad input
(config, dataset, a bad parquet file), 1 training failed or stalled.
"""
from __future__ import annotations

import argparse
import logging
import sys

from twotower.distributed.config import ConfigError, TrainConfig
from twotower.jobs.common import run_standalone

FLAG_KEYS = {"num_workers": "num_workers", "epochs": "epochs", "out": "storage_path", "run_name": "run_name",
             "resume_from": "resume_from", "max_failures": "max_failures", "skip_bad_files": "skip_bad_files"}


def configure(p: argparse.ArgumentParser) -> None:
    """Add the ``train`` arguments to ``p`` and set ``func``."""
    p.add_argument("--dataset", required=True, help="prepared dataset directory or URI (twotower prepare)")
    p.add_argument("--config", help="YAML config (see twotower/jobs/configs/default.yaml)")
    p.add_argument("--num-workers", type=int, help="Ray Train workers (data-parallel replicas)")
    p.add_argument("--epochs", type=int, help="maximum epochs")
    p.add_argument("--out", help="storage_path, a directory or URI: runs are written to OUT/<run_name> (default: runs)")
    p.add_argument("--run-name", help="run directory name (default: <dataset name>-<timestamp>)")
    p.add_argument("--resume-from", help="checkpoint directory or URI to continue from (next epoch)")
    p.add_argument("--max-failures", type=int,
                   help="restart the workers from the latest epoch checkpoint up to this many times (-1: always)")
    p.add_argument("--skip-bad-files", action="store_const", const=True, default=None,
                   help="leave out train/valid parquet files with a bad footer or columns (logged as WARNING, "
                        "listed in summary.json) instead of failing")
    p.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (repeatable); same as a positional KEY=VALUE")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. lr=0.001 temperature=0.1 (one contiguous group; use --set "
                        "to place overrides between flags)")
    p.set_defaults(func=run)


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` on an ``argparse`` sub-parsers object; returns the new parser."""
    p = subparsers.add_parser("train", help="train a two-tower model on Ray",
                              description="Data-parallel two-tower training on Ray Train.")
    configure(p)
    return p


def build_config(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from ``--config``, the overrides, then the flags. Raises ConfigError (names the key)."""
    flags = {key: getattr(args, name) for name, key in FLAG_KEYS.items() if getattr(args, name) is not None}
    return TrainConfig.from_yaml(args.config, list(args.overrides) + list(args.set_overrides), flags)


def format_history(history: list[dict], ks: list[int], best_epoch: int) -> str:
    """Compact per-epoch table: epoch, train loss, valid Recall@k per k, NDCG@10, seconds (* = best)."""
    cols = ["epoch", "loss"] + [f"R@{k}" for k in ks] + ["NDCG@10", "sec"]
    lines = ["  ".join(f"{c:>8}" for c in cols)]
    for h in history:
        vals = [f"{h['epoch']}{'*' if h['epoch'] == best_epoch else ' '}", f"{h['train_loss']:.4f}"]
        vals += [f"{h.get(f'valid_recall@{k}', float('nan')):.4f}" for k in ks]
        vals += [f"{h.get('valid_ndcg@10', float('nan')):.4f}", f"{h['seconds']:.1f}"]
        lines.append("  ".join(f"{v:>8}" for v in vals))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``train`` command; returns the process exit code."""
    try:
        cfg = build_config(args)
    except ConfigError as e:
        print(f"twotower train: error: {e}", file=sys.stderr)
        return 2
    from twotower.distributed.trainer import TwoTowerTrainer
    from twotower.data.errors import DataFormatError
    from twotower.distributed.watchdog import TrainingStalledError
    from twotower.model.schema import SchemaError

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    try:
        result = TwoTowerTrainer(cfg).fit(args.dataset)
    except (ConfigError, SchemaError, FileNotFoundError, DataFormatError) as e:
        print(f"twotower train: error: {e}", file=sys.stderr)
        return 2
    except TrainingStalledError as e:
        print(f"twotower train: stalled: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - failed run, e.g. WorkerGroupError listing the workers' errors
        print(f"twotower train: training failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    best = result.metrics
    print(format_history(result.history, cfg.eval_cutoffs, best["epoch"]))
    print(f"best epoch {best['epoch']}: {cfg.monitor_key} = {best[cfg.monitor_key]:.4f}"
          f"{' (early stopped)' if result.stopped_early else ''}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"run dir:         {result.run_dir}  (metrics.csv, training_curves.png, config.yaml)")
    if result.resumed_after_epochs:
        print(f"recovered from worker failure(s): resumed after epoch(s) {result.resumed_after_epochs}")
    for bad in result.skipped_files:
        print(f"skipped bad file: {bad['path']}: {bad['reason']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m twotower.jobs.train --dataset DIR ...``; returns the exit code."""
    return run_standalone("twotower train", "Data-parallel two-tower training on Ray.", configure, argv)


if __name__ == "__main__":
    sys.exit(main())
