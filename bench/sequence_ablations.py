"""Ablations of the ML-1M sequence configuration through Ray Train, one row each (not a test).

    python bench/sequence_ablations.py --dataset D --epochs 10 --out /tmp/ablations.json \\
        --write-docs docs/results.md

Every variant is ``jobs/configs/ml-1m-sequence.yaml`` plus its overrides, trained by ``TwoTowerTrainer``
(1 worker, the same epoch budget ``--epochs``, early stopping as configured), then its best checkpoint
(by valid Recall@10) is scored on the test split by ``twotower.evaluation.evaluate`` (full ranking
over the catalogue minus the user's earlier items; sampled HR@10 / NDCG@10 against 100 unseen items).
Rows are appended to ``--out`` as they finish, and variants already there are skipped, so an
interrupted run continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line, write_docs_section  # noqa: E402
from twotower.distributed.config import TrainConfig  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "ml-1m-sequence.yaml"
VARIANTS: dict[str, list[str]] = {                  # the shipped config trains loss: full_softmax
    "shipped config": [],
    "sampled softmax: in-batch + uniform with logQ": ["loss=softmax"],
    "sampled softmax without logQ correction": ["loss=softmax", "logq_correction=false"],
    "sampled softmax without extra uniform negatives": ["loss=softmax", "num_negatives=0"],
    "max length 50": ["max_sequence_length=50"],
    "1 block": ["sequence_layers=1"],
    "trilinear context": ["context_mode=trilinear"],
}
assert not any("," in name for name in VARIANTS), "--variants is comma-separated"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="prepared ML-1M (twotower prepare movielens --variant ml-1m)")
    p.add_argument("--epochs", type=int, default=10, help="epoch budget of every variant")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every variant (repeatable), e.g. --set lr=0.002")
    p.add_argument("--work", default="/tmp/twotower-ablations")
    p.add_argument("--out", required=True, help="JSON of the finished rows (read first: done variants are skipped)")
    p.add_argument("--write-docs", help="regenerate this file's sequence_ablations section (docs/results.md)")
    return p.parse_args(argv)


def run_variant(args, name: str) -> dict:
    from twotower.distributed.trainer import TwoTowerTrainer
    from twotower.evaluation import evaluate
    overrides = [*args.overrides, *VARIANTS[name], f"epochs={args.epochs}", f"storage_path={args.work}",
                 f"run_name=ablation-{name.replace(' ', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"]
    cfg = TrainConfig.from_yaml(CONFIG, overrides)
    t0 = time.perf_counter()
    result = TwoTowerTrainer(cfg).fit(args.dataset)
    wall = time.perf_counter() - t0
    test = evaluate(result.best_checkpoint, args.dataset, split="test", ks=(10, 50))["model"]
    return {"variant": name, "overrides": VARIANTS[name], "epochs": len(result.history),
            "best_epoch": result.metrics["epoch"], "valid_recall@10": result.metrics["valid_recall@10"],
            **{f"test_{k}": test[k] for k in ("recall@10", "ndcg@10", "recall@50", "sampled_hr@10", "sampled_ndcg@10")},
            "fit_wall_s": wall, "positions_per_s": sum(h["examples_per_s"] for h in result.history) / len(result.history)}


def render(rows: list[dict], args, machine: str) -> str:
    cmd = "python bench/sequence_ablations.py " + " ".join(sys.argv[1:])
    lines = ["## ML-1M sequence encoder: ablations", "", f"Command: `{cmd}`", "", f"Machine: {machine}.", "",
             f"`jobs/configs/ml-1m-sequence.yaml` plus each row's overrides (and {args.overrides or 'nothing else'}), "
             f"{args.epochs} epochs at most, Ray Train 1 worker; test metrics of the best-valid checkpoint.", "",
             "| variant | overrides | epochs (best) | valid R@10 | test Recall@10 | NDCG@10 | Recall@50 | sampled HR@10 "
             "| sampled NDCG@10 | fit wall s | positions/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {' '.join(r['overrides']) or '-'} | {r['epochs']} ({r['best_epoch']}) | "
                     f"{r['valid_recall@10']:.4f} | {r['test_recall@10']:.4f} | {r['test_ndcg@10']:.4f} | "
                     f"{r['test_recall@50']:.4f} | {r['test_sampled_hr@10']:.4f} | {r['test_sampled_ndcg@10']:.4f} | "
                     f"{r['fit_wall_s']:.0f} | {r['positions_per_s']:,.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    machine = machine_line()
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        if any(r["variant"] == name for r in rows):
            continue
        rows.append(run_variant(args, name))
        out.write_text(json.dumps(rows, indent=1))
        print(json.dumps(rows[-1]), flush=True)
    md = render(rows, args, machine)
    print(md)
    if args.write_docs:
        write_docs_section(args.write_docs, "sequence_ablations", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
