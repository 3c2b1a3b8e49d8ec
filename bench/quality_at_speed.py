"""Quality at speed: epochs and wall time until the ML-1M quality bar is reached (not a test).

    python bench/quality_at_speed.py --prepare ml-1m --work /tmp/twotower-bench-quality --epochs 6 \\
        --write-docs docs/benchmarks.md

The bar (training issue): on the ML-1M test split (leave-last-out), sampled HR@10 >= 0.70 and
full-ranking Recall@10 >= 3x the popularity baseline's. One ``TwoTowerTrainer`` run (default model,
``--num-workers`` workers, every epoch's checkpoint kept) is timed from the call of ``fit`` (Ray
start-up included); afterwards every epoch's checkpoint is evaluated on the test split (outside the
timed run) and the first epoch meeting both conditions is reported with the wall time at which
that epoch's checkpoint was reported: the fit's wall time minus the seconds of the later epochs
(each epoch's ``seconds`` in ``metrics.csv``; the small teardown after the last report is counted
in every epoch's time, so the figure is slightly pessimistic).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import epoch_report_times, machine_line, write_docs_section  # noqa: E402
from twotower.distributed.config import TrainConfig  # noqa: E402

HR_BAR, RATIO_BAR = 0.70, 3.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", help="prepared ML-1M directory (default: prepare into --work)")
    p.add_argument("--prepare", default="ml-1m")
    p.add_argument("--work", default="/tmp/twotower-bench-quality")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--write-docs", help="regenerate this file's quality_at_speed section (docs/benchmarks.md)")
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from twotower.evaluation import evaluate
    from twotower.distributed.trainer import TwoTowerTrainer
    work = Path(args.work)
    ds = Path(args.dataset) if args.dataset else work / args.prepare
    if not (ds / "schema.json").exists():
        from twotower.distributed.sources import prepare_movielens
        prepare_movielens(ds, args.prepare, overwrite=True)
    machine = machine_line()
    cfg = TrainConfig(num_workers=args.num_workers, epochs=args.epochs, patience=0, checkpoints_to_keep=None,
                      storage_path=str(work / "runs"), run_name=f"quality-{time.strftime('%Y%m%d-%H%M%S')}")
    t0 = time.perf_counter()
    result = TwoTowerTrainer(cfg).fit(ds)
    fit_wall = time.perf_counter() - t0
    history = list(csv.DictReader((result.run_dir / "metrics.csv").open()))
    rows, reached = [], None
    times = epoch_report_times(fit_wall, [float(h["seconds"]) for h in history])
    for h, at in zip(history, times):
        epoch = int(h["epoch"])
        ckpt = result.run_dir / f"epoch_{epoch:04d}"
        test = evaluate(ckpt, ds, split="test", ks=(10,))
        model, pop = test["model"], test["popularity"]
        row = {"epoch": epoch, "wall_s": at, "epoch_s": float(h["seconds"]),
               "examples_per_s": float(h["examples_per_s"]), "sampled_hr@10": model["sampled_hr@10"],
               "recall@10": model["recall@10"], "ratio": model["recall@10"] / pop["recall@10"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if reached is None and row["sampled_hr@10"] >= HR_BAR and row["ratio"] >= RATIO_BAR:
            reached = row
    cmd = "python bench/quality_at_speed.py " + " ".join(sys.argv[1:])
    lines = ["## Quality at speed: time to the ML-1M quality bar", "", f"Command: `{cmd}`", "",
             f"Machine: {machine}.", "",
             f"Default model, {args.num_workers} Ray Train workers x batch 1024, one run of {args.epochs} epochs "
             f"(fit wall time {fit_wall:.0f} s including Ray start-up); test split evaluated after the run for "
             "every epoch's checkpoint. Bar: sampled HR@10 >= 0.70 and Recall@10 >= 3x popularity.", "",
             "| epoch | wall s since fit start | epoch s | examples/s | test sampled HR@10 | test Recall@10 | x popularity |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " **(bar reached)**" if r is reached else ""
        lines.append(f"| {r['epoch']}{mark} | {r['wall_s']:.0f} | {r['epoch_s']:.0f} | {r['examples_per_s']:,.0f} | "
                     f"{r['sampled_hr@10']:.4f} | {r['recall@10']:.4f} | {r['ratio']:.2f}x |")
    lines += ["", (f"**Bar reached after {reached['epoch']} epochs, {reached['wall_s']:.0f} s** of wall time."
                   if reached else f"**Bar not reached in {args.epochs} epochs.**")]
    md = "\n".join(lines)
    print(md)
    if args.write_docs:
        write_docs_section(args.write_docs, "quality_at_speed", md)
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "fit_wall_s": fit_wall}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
