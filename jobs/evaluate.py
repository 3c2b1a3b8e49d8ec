"""``evaluate`` command: full-ranking metrics of a checkpoint vs the popularity baseline (no Ray).

    python -m twotower.jobs.evaluate --checkpoint runs/ml-1m-.../best_checkpoint --dataset datasets/ml-1m
    twotower evaluate --checkpoint CKPT --dataset DIR --split valid --ks 10 20 50 --out metrics.json

Prints a table (metric, model, popularity, model/popularity ratio) and writes the metrics as JSON to
``--out`` (default: ``eval_<split>.json`` next to the checkpoint directory, i.e. in the run directory).
Exit codes: 0 ok, 2 bad input (checkpoint, dataset, split).
"""
from __future__ import annotations

import argparse
import json
import sys
from twotower.jobs.common import run_standalone
from twotower import storage


def configure(p: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` arguments to ``p`` and set ``func``."""
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or URI (e.g. RUN_DIR/best_checkpoint)")
    p.add_argument("--dataset", required=True, help="prepared dataset directory or URI the model was trained on")
    p.add_argument("--split", default="test", choices=("valid", "test"), help="split to rank (default: test)")
    p.add_argument("--ks", type=int, nargs="+", default=[10, 20, 50], help="cut-offs k (default: 10 20 50)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="queries scored per batch (default: 512, fewer for catalogues over 65k items)")
    p.add_argument("--out", help="metrics JSON path or URI (default: <checkpoint>/../eval_<split>.json)")
    p.add_argument("--index", help="also rank through this index (twotower index output) and report its "
                                   "recall against exact search")
    p.set_defaults(func=run)


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``evaluate`` on an ``argparse`` sub-parsers object; returns the new parser."""
    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint against the popularity baseline",
                              description="Full-ranking Recall/HR/NDCG@k of a checkpoint and of popularity.")
    configure(p)
    return p


def format_table(result: dict) -> str:
    """Rows: every metric but ``count`` and ``hr@k`` (= recall@k with one target per query); columns
    model, popularity and their ratio."""
    model, pop = result["model"], result["popularity"]
    keys = [k for k in model if k != "count" and not k.startswith("hr@")]
    index = result.get("index")
    lines = [f"{result['split']} split, {result['num_queries']:,} queries",
             f"{'metric':<18}{'model':>10}{'popularity':>12}{'ratio':>9}" + (f"{'via index':>11}" if index else "")]
    for k in keys:
        ratio = f"{model[k] / pop[k]:.2f}x" if pop.get(k) else "-"
        lines.append(f"{k:<18}{model[k]:>10.4f}{pop.get(k, float('nan')):>12.4f}{ratio:>9}"
                     + (f"{index[k]:>11.4f}" if index else ""))
    lines += [f"{key}: {value:.4f} (index top-k vs exact top-k)" for key, value in result.items()
              if key.startswith("index_recall@")]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``evaluate`` command; returns the process exit code."""
    from twotower.evaluation import evaluate
    from twotower.model.checkpoint import CheckpointError
    from twotower.model.schema import SchemaError

    if any(k < 1 for k in args.ks) or (args.batch_size is not None and args.batch_size < 1):
        print("twotower evaluate: error: --ks and --batch-size must be positive", file=sys.stderr)
        return 2
    try:
        result = evaluate(args.checkpoint, args.dataset, split=args.split, ks=args.ks, batch_size=args.batch_size,
                          index_dir=args.index)
    except (CheckpointError, SchemaError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"twotower evaluate: error: {e}", file=sys.stderr)
        return 2
    out = args.out or storage.join(storage.parent(args.checkpoint), f"eval_{args.split}.json")
    storage.makedirs(storage.parent(out))
    storage.write_bytes(out, json.dumps(result, indent=2, sort_keys=True).encode())
    print(format_table(result))
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m twotower.jobs.evaluate --checkpoint CKPT --dataset DIR``; returns the exit code."""
    return run_standalone("twotower evaluate", "Evaluate a two-tower checkpoint.", configure, argv)


if __name__ == "__main__":
    sys.exit(main())
