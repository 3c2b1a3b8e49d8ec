"""Time to quality against implicit's ALS on ML-1M, side by side in one run (not a test).

    python bench/time_to_quality.py --dataset /work/seq-data/ml-1m --als-python /work/venv-als/bin/python \\
        --budget 120 --set hidden_dims=[] --set lr=0.03 --write-docs docs/benchmarks.md

Three systems learn from the same train split of a prepared dataset (leave-last-out) and are scored on
the same test split by the same ``RankingAccumulator`` (full-ranking Recall@10 over the catalogue minus
the user's earlier items; sampled HR@10 against 100 unseen items, He et al. 2017):

* **ALS** (implicit's ``AlternatingLeastSquares``, Hu, Koren & Volinsky 2008) in its own venv
  (``--als-python``; ``bench/_als_side.py``): every ``factors:regularization:alpha`` of ``--als-configs``
  is fitted one sweep at a time; the config with the best *valid* Recall@10 after the last sweep is
  ALS's row, and its final *test* Recall@10 and sampled HR@10 are the targets. Its wall time counts the
  matrix build and the sweeps (the interpreter start and ``import implicit`` are printed beside it).
* **twotower, plain loop** (``_common.plain_train``, every core): the default model (plus ``--set``
  overrides); wall time = data load + model build + training seconds; the test split is scored every
  ``--eval-every`` steps outside the timed section, until ``--budget`` seconds of training.
* **twotower, Ray Train** (``TwoTowerTrainer``, 1 worker): the same config in ``--ray-epochs`` short epochs
  of ``--ray-steps`` steps (``max_steps_per_epoch``: validation and a checkpoint every ``--ray-steps``
  steps; each epoch continues the pass over the data where the last one stopped, ``TrainStream``), every
  epoch's checkpoint kept; timed from the call of ``fit`` (Ray start-up, the per-epoch validation and
  checkpoints included); every checkpoint is scored on the test split after the run, at the time it was
  reported (``_common.epoch_report_times``).

For each system the table gives the wall time to reach ALS's test Recall@10 and its sampled HR@10, and
the best test Recall@10 reached within the budget.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import (TestQueries, build_model, epoch_report_times, load_split_tensors, machine_line,  # noqa: E402
                     plain_train, write_docs_section)
from twotower.data.splits import read_split_examples  # noqa: E402
from twotower.distributed.config import TrainConfig  # noqa: E402
from twotower.model.schema import DatasetSchema  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", help="prepared ML-1M directory (default: prepare --prepare into --work)")
    p.add_argument("--prepare", default="ml-1m")
    p.add_argument("--work", default="/tmp/twotower-bench-ttq")
    p.add_argument("--als-python", default=sys.executable, help="python of a venv with implicit installed")
    p.add_argument("--als-configs", default="64:0.01:1,64:0.05:10,128:0.1:20",
                   help="comma-separated factors:regularization:alpha")
    p.add_argument("--als-iterations", type=int, default=15)
    p.add_argument("--budget", type=float, default=300.0, help="training seconds of the plain loop")
    p.add_argument("--eval-every", type=int, default=50, help="plain loop: steps between test scorings")
    p.add_argument("--ray-steps", type=int, default=100, help="Ray Train: steps per (short) epoch")
    p.add_argument("--ray-epochs", type=int, default=20)
    p.add_argument("--systems", default="als,plain,ray")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="twotower config override (repeatable), e.g. --set lr=0.01")
    p.add_argument("--write-docs", help="regenerate this file's time_to_quality section (docs/benchmarks.md)")
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def run_als(args, ds: Path, schema: DatasetSchema, test: TestQueries, valid: TestQueries) -> dict:
    """Fit every ALS config in the ALS venv; the best on valid Recall@10 gives the curve and the targets."""
    work = Path(tempfile.mkdtemp(prefix="als-", dir=args.work))
    train = read_split_examples(ds, "train", schema)
    np.savez(work / "train.npz", user=train["user_idx"], item=train["item_idx"],
             shape=np.array([schema.num_users, schema.num_items]))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run([args.als_python, str(Path(__file__).with_name("_als_side.py")), "--train", str(work / "train.npz"),
                    "--out", str(work / "out.npz"), "--configs", args.als_configs,
                    "--iterations", str(args.als_iterations)], check=True, env=env)
    process_s = time.perf_counter() - t0
    out = np.load(work / "out.npz")
    last = args.als_iterations - 1
    configs = [str(c) for c in out["configs"]]
    valid_recall = [valid.factor_metrics(out[f"user_{c}_{last}"], out[f"item_{c}_{last}"])["recall@10"]
                    for c in range(len(configs))]
    best = int(np.argmax(valid_recall))
    curve = []
    for s, sec in enumerate(out[f"seconds_{best}"]):
        m = test.factor_metrics(out[f"user_{best}_{s}"], out[f"item_{best}_{s}"])
        curve.append({"step": s + 1, "wall_s": float(sec), "recall": m["recall@10"], "hr": m["sampled_hr@10"]})
        print(f"ALS {configs[best]} sweep {s + 1}: {sec:.1f} s, test Recall@10 {m['recall@10']:.4f}, "
              f"sampled HR@10 {m['sampled_hr@10']:.4f}", flush=True)
    return {"name": "ALS (implicit)", "config": f"factors:reg:alpha {configs[best]}, {args.als_iterations} sweeps "
            f"(best on valid Recall@10 of {', '.join(f'{c} {v:.4f}' for c, v in zip(configs, valid_recall))})",
            "curve": curve, "process_s": process_s, "import_s": float(out["import_s"])}


def run_plain(args, ds: Path, cfg: TrainConfig, test: TestQueries) -> dict:
    """The plain loop on every core, the test split scored every ``--eval-every`` steps (untimed)."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    t0 = time.perf_counter()
    model, schema = build_model(ds, cfg)
    data = load_split_tensors(ds, "train", schema)
    setup_s, curve = time.perf_counter() - t0, []

    def on_steps(run) -> bool:
        m = test.model_metrics(model)
        curve.append({"step": run.steps, "wall_s": setup_s + run.seconds, "recall": m["recall@10"],
                      "hr": m["sampled_hr@10"]})
        print(f"plain step {run.steps}: {setup_s + run.seconds:.1f} s, test Recall@10 {m['recall@10']:.4f}, "
              f"sampled HR@10 {m['sampled_hr@10']:.4f}", flush=True)
        return run.seconds >= args.budget

    run = plain_train(model, cfg, data, epochs=1000, seed=cfg.seed, every=args.eval_every, on_steps=on_steps)
    return {"name": "twotower, plain loop", "config": f"{torch.get_num_threads()} threads, batch {cfg.batch_size}",
            "curve": curve, "setup_s": setup_s, "examples_per_s": run.examples_per_s}


def run_ray(args, ds: Path, cfg: TrainConfig) -> dict:
    """``TwoTowerTrainer`` with 1 worker in short epochs; every checkpoint scored on test afterwards."""
    from twotower.distributed.trainer import TwoTowerTrainer
    from twotower.evaluation import evaluate
    cfg = cfg.model_copy(update={"epochs": args.ray_epochs, "max_steps_per_epoch": args.ray_steps, "patience": 0,
                                 "checkpoints_to_keep": None, "storage_path": str(Path(args.work) / "runs"),
                                 "run_name": f"ttq-{time.strftime('%Y%m%d-%H%M%S')}"})
    t0 = time.perf_counter()
    result = TwoTowerTrainer(cfg).fit(ds)
    fit_wall = time.perf_counter() - t0
    times = epoch_report_times(fit_wall, [h["seconds"] for h in result.history])
    curve = []
    for h, at in zip(result.history, times):
        m = evaluate(result.run_dir / f"epoch_{h['epoch']:04d}", ds, split="test", ks=(10,))["model"]
        curve.append({"step": h["epoch"] * args.ray_steps, "wall_s": at, "recall": m["recall@10"],
                      "hr": m["sampled_hr@10"]})
        print(f"ray epoch {h['epoch']}: {at:.1f} s, test Recall@10 {m['recall@10']:.4f}, sampled HR@10 "
              f"{m['sampled_hr@10']:.4f}", flush=True)
    return {"name": "twotower, Ray Train 1 worker", "config": f"{args.ray_epochs} epochs x {args.ray_steps} steps, "
            f"batch {cfg.batch_size}, torch threads {result.torch_threads}", "curve": curve, "fit_wall_s": fit_wall,
            "examples_per_s": float(np.mean([h["examples_per_s"] for h in result.history]))}


def first_reaching(curve: list[dict], key: str, target: float) -> float | None:
    return next((c["wall_s"] for c in curve if c[key] >= target - 1e-12), None)


def render(results: list[dict], args, machine: str, cfg: TrainConfig) -> str:
    als = next((r for r in results if r["name"].startswith("ALS")), None)
    target_r, target_h = (als["curve"][-1]["recall"], als["curve"][-1]["hr"]) if als else (float("nan"),) * 2
    cmd = "python bench/time_to_quality.py " + " ".join(sys.argv[1:])
    lines = ["## Time to quality against implicit ALS (ML-1M)", "", f"Command: `{cmd}`", "", f"Machine: {machine}.", "",
             f"Targets: ALS's final test Recall@10 **{target_r:.4f}** and sampled HR@10 **{target_h:.4f}**. "
             f"twotower: default model with {args.overrides or 'no overrides'}; lr {cfg.lr}, batch {cfg.batch_size}.",
             "", "| system | config | wall s to ALS's Recall@10 | wall s to ALS's sampled HR@10 | best test Recall@10 "
             "(at wall s) | its sampled HR@10 | examples/s |", "|---|---|---|---|---|---|---|"]
    for r in results:
        best = max(r["curve"], key=lambda c: c["recall"])
        fmt = lambda v: "not reached" if v is None else f"{v:.1f}"  # noqa: E731
        rate = f"{r['examples_per_s']:,.0f}" if "examples_per_s" in r else "-"
        lines.append(f"| {r['name']} | {r['config']} | {fmt(first_reaching(r['curve'], 'recall', target_r))} | "
                     f"{fmt(first_reaching(r['curve'], 'hr', target_h))} | {best['recall']:.4f} ({best['wall_s']:.0f}) | "
                     f"{best['hr']:.4f} | {rate} |")
    if als:
        lines += ["", f"ALS process (interpreter start, `import implicit`, fit, saving factors): "
                      f"{als['process_s']:.1f} s, of which the import {als['import_s']:.1f} s."]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    ds = Path(args.dataset) if args.dataset else Path(args.work) / args.prepare
    if not (ds / "schema.json").exists():
        from twotower.distributed.sources import prepare_movielens
        prepare_movielens(ds, args.prepare, overwrite=True)
    machine, schema = machine_line(), DatasetSchema.load(ds)
    cfg = TrainConfig.from_yaml(None, args.overrides)
    test, valid = TestQueries(ds, schema, "test"), TestQueries(ds, schema, "valid")
    systems, results = args.systems.split(","), []
    if "als" in systems:
        results.append(run_als(args, ds, schema, test, valid))
    if "plain" in systems:
        results.append(run_plain(args, ds, cfg, test))
    if "ray" in systems:
        results.append(run_ray(args, ds, cfg))
    md = render(results, args, machine, cfg)
    print(md)
    if args.write_docs:
        write_docs_section(args.write_docs, "time_to_quality", md)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
