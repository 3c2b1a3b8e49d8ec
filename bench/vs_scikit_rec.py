"""twotower vs scikit-rec's ContextualizedTwoTowerEstimator on ML-100K, side by side (not a test).

    python bench/vs_scikit_rec.py --skrec-python /work/skrec-venv/bin/python --data-dir /work/shared/data \
        --write-docs docs/benchmarks.md

(``--threads ''`` drops the 2-thread row, as in the published run on the shared 2-core machine; 10-40
minutes depending on the load. scikit-rec 0.4.2 pins numpy 1.26 / pandas 2.3, so it lives in its own
venv that reuses the system torch: ``python -m venv --system-site-packages /work/skrec-venv &&
/work/skrec-venv/bin/pip install scikit-rec==0.4.2``.)

One command runs both, one after the other, each on one torch thread (``--threads 2`` adds a twotower
row with 2 threads, stopped once it reaches scikit-rec's HR@10). Same split (twotower's leave-last-out
ML-100K: train / valid = second-last / test = last interaction per user), same evaluation: sampled
HR@10 on the test split (1 positive + 100 negatives drawn from the items the user never interacted with,
He et al. 2017) computed by twotower's ``RankingAccumulator`` for both models, from (queries, num_items)
score matrices in twotower's item index space, so both see exactly the same negatives.

* scikit-rec (its own interpreter, ``bench/_skrec_side.py``, since it pins numpy 1.26 / pandas 2.3):
  Quick Start estimator (trilinear, 32/32/16, lr 1e-3, batch 256, BCE, up to 50 epochs, early stopping
  patience 5 on the valid loss, best weights restored) trained through ``RankingRecommender.train`` on the
  train split plus 4 negatives per positive (uniform over the items the user has no train interaction
  with, drawn once, seeded, with the positive's context; OUTCOME 0); valid = the valid positives + 4
  negatives each. Features: user gender / age / occupation one-hot, item genres multi-hot + year one-hot,
  context hour_sin, hour_cos, is_weekend, day-of-week one-hot. Its wall time is the sum of its epochs'
  training seconds (validation loss and scoring excluded); its HR@10 is that of the restored best epoch.
* twotower, plain loop (``_common.plain_train``: in-process, in-memory tensors, twotower's model + in-batch
  softmax with logQ + Adam), for two configurations (``TWOTOWER_CONFIGS``): ``default`` = ``TrainConfig()``
  (ID 64/64, D 64, MLP [256], mean-pooled history of 50 items, batch 1024, lr 3e-3) and ``fast`` = the same
  with ID 32/32, D 32, MLP [64], batch 512. Test and valid metrics after every epoch (untimed); training
  stops at scikit-rec's wall time, or by twotower's own early stopping (``patience`` 3 epochs without a
  better valid Recall@10, as ``twotower train``). "time to reach" = training seconds at the end of the
  first epoch whose test HR@10 >= scikit-rec's final; "HR@10 at equal wall time" = test HR@10 of the epoch
  with the best valid Recall@10 among those done within scikit-rec's wall time (the model
  ``twotower train`` would keep).
* twotower through Ray Train (``TwoTowerTrainer``, 1 worker of 1 CPU) with the ``fast`` config for as many
  epochs as its plain loop needed to reach the target, wall time of the whole ``fit`` (Ray start-up, Ray Data, per-epoch
  validation and checkpoints included), test HR@10 of its best checkpoint via ``evaluate``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import (TestQueries, build_model, load_split_tensors, machine_line, plain_train,  # noqa: E402
                     write_docs_section)
from _skrec_data import write_skrec_inputs  # noqa: E402
from twotower.distributed.config import TrainConfig  # noqa: E402

SKREC_CONFIG = {"user_embedding_dim": 32, "item_embedding_dim": 32, "final_embedding_dim": 16,
                "context_mode": "trilinear", "learning_rate": 0.001, "epochs": 50, "batch_size": 256,
                "early_stopping_patience": 5, "restore_best_weights": True, "device": "cpu"}


# twotower configurations: TrainConfig() defaults, and an explicitly stated smaller/faster one
TWOTOWER_CONFIGS = {
    "default": {},
    "fast": {"batch_size": 512, "model": {"user_embedding_dim": 32, "item_embedding_dim": 32,
                                          "final_embedding_dim": 32, "hidden_dims": [64]}},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/twotower-bench-skrec", help="prepared data, scikit-rec files, Ray runs")
    p.add_argument("--data-dir", default=None, help="folder holding ml-100k (default: twotower's lookup)")
    p.add_argument("--skrec-python", default="/work/skrec-venv/bin/python")
    p.add_argument("--negatives", type=int, default=4, help="scikit-rec: sampled negatives per positive")
    p.add_argument("--skrec-epochs", type=int, default=50)
    p.add_argument("--configs", default="default,fast", help="twotower configurations (TWOTOWER_CONFIGS), 1 thread each")
    p.add_argument("--threads", default="2", help="extra rows of the last configuration with these torch threads, "
                   "stopped once they reach scikit-rec's HR@10 (empty: none)")
    p.add_argument("--max-epochs", type=int, default=60, help="cap of twotower plain-loop epochs")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray Train row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-load", type=float, default=3.0, help="wait until the 1-min load average is below this")
    p.add_argument("--wait-max", type=float, default=600.0, help="... for at most this many seconds")
    p.add_argument("--write-docs", help="regenerate this file's vs_scikit_rec section (docs/benchmarks.md)")
    p.add_argument("--out", help="write all results as JSON here")
    p.add_argument("--render", help="only re-render the table (and --write-docs) from a JSON written by --out")
    return p.parse_args(argv)


def wait_for_quiet(limit: float, max_s: float) -> float:
    """Poll the 1-minute load average every 15 s until it is below ``limit`` or ``max_s`` passed."""
    t0 = time.time()
    while os.getloadavg()[0] >= limit and time.time() - t0 < max_s:
        print(f"load {os.getloadavg()[0]:.1f} >= {limit}: waiting ({time.time() - t0:.0f} s)", flush=True)
        time.sleep(15)
    return os.getloadavg()[0]


def run_skrec(args, ds: Path, test: TestQueries) -> dict:
    work = Path(args.work) / "skrec"
    info = write_skrec_inputs(ds, work, negatives=args.negatives, seed=args.seed,
                              config={**SKREC_CONFIG, "epochs": args.skrec_epochs, "random_state": args.seed})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    load = os.getloadavg()[0]
    subprocess.run([args.skrec_python, str(Path(__file__).with_name("_skrec_side.py")), str(work)], check=True, env=env)
    res = json.loads((work / "result.json").read_text())
    wall, curve = 0.0, []
    for e in res["epochs"]:
        wall += e["train_s"]
        path = work / f"scores_{e['epoch']:03d}.npy"
        scores = torch.from_numpy(np.load(path))
        path.unlink()
        splits = [len(b["item_idx"]) for b, _ in test.batches]
        curve.append({**e, "wall_s": wall,
                      "test_hr": test.metrics(list(torch.split(scores, splits)))["sampled_hr@10"]})
    best = curve[res["best_epoch"] - 1]
    reach = next(c for c in curve if c["test_hr"] >= best["test_hr"])
    return {**res, **info, "curve": curve, "wall_s": wall, "final_hr": best["test_hr"], "reach_s": reach["wall_s"],
            "rows_per_s": sum(c["rows"] for c in curve) / wall, "load_at_start": load}


def run_plain(args, ds: Path, name: str, cfg: TrainConfig, test: TestQueries, valid: TestQueries, threads: int,
              target_hr: float, budget_s: float, stop_at_target: bool = False) -> dict:
    """Plain loop until its training seconds reach ``budget_s``, early stopping (``cfg.patience`` epochs
    without a better valid Recall@10, as ``twotower train``) or ``--max-epochs``; test and valid metrics
    after every epoch (untimed). ``stop_at_target``: stop once test sampled HR@10 >= ``target_hr``."""
    torch.set_num_threads(threads)
    model, schema = build_model(ds, cfg)
    data = load_split_tensors(ds, "train", schema)
    curve: list[dict] = []

    def on_epoch(epoch, run) -> bool:
        t, v = test.model_metrics(model), valid.model_metrics(model)
        curve.append({"epoch": epoch, "wall_s": run.seconds, "examples": run.examples,
                      "test_hr": t["sampled_hr@10"], "valid_recall": v["recall@10"], "valid_hr": v["sampled_hr@10"]})
        print(f"twotower {name} {threads} thread(s) epoch {epoch}: {run.seconds:.1f} s, test HR@10 "
              f"{t['sampled_hr@10']:.4f}, valid Recall@10 {v['recall@10']:.4f}", flush=True)
        best = max(range(len(curve)), key=lambda i: curve[i]["valid_recall"])
        stalled = cfg.patience > 0 and len(curve) - 1 - best >= cfg.patience
        return run.seconds >= budget_s or stalled or (stop_at_target and t["sampled_hr@10"] >= target_hr)

    load = os.getloadavg()[0]
    run = plain_train(model, cfg, data, epochs=args.max_epochs, on_epoch=on_epoch, seed=cfg.seed)
    reach = next((c for c in curve if c["test_hr"] >= target_hr), None)
    within = [c for c in curve if c["wall_s"] <= budget_s] or curve[:1]
    chosen = max(within, key=lambda c: (c["valid_recall"], -c["epoch"]))
    why = ("reached the target" if stop_at_target and reach else "scikit-rec's wall time" if run.seconds >= budget_s
           else "max epochs" if run.epochs >= args.max_epochs else f"early stopping (patience {cfg.patience})")
    return {"name": name, "threads": threads, "curve": curve, "epochs": run.epochs, "wall_s": run.seconds,
            "rows_per_s": run.examples_per_s, "reach_s": reach["wall_s"] if reach else None,
            "reach_epoch": reach["epoch"] if reach else None, "equal_wall_hr": chosen["test_hr"],
            "equal_wall_epoch": chosen["epoch"], "last_hr": curve[-1]["test_hr"], "stopped_by": why,
            "stop_at_target": stop_at_target, "config": cfg.model_dump(mode="json"), "load_at_start": load}


def run_ray(args, ds: Path, cfg: TrainConfig, epochs: int, target_hr: float) -> dict:
    from twotower.evaluation import evaluate
    from twotower.distributed.trainer import TwoTowerTrainer
    cfg = cfg.model_copy(update={"epochs": epochs, "patience": 0, "num_workers": 1, "cpus_per_worker": 1.0,
                                 "storage_path": str(Path(args.work) / "ray"),
                                 "run_name": f"vs-skrec-{time.strftime('%Y%m%d-%H%M%S')}"})
    load, t0 = os.getloadavg()[0], time.perf_counter()
    result = TwoTowerTrainer(cfg).fit(ds)
    wall = time.perf_counter() - t0
    hr = evaluate(result.best_checkpoint, ds, "test")["model"]["sampled_hr@10"]
    train_s = sum(h["seconds"] for h in result.history)
    return {"epochs": len(result.history), "wall_s": wall, "epoch_seconds_sum": train_s, "test_hr": hr,
            "rows_per_s": float(np.mean([h["examples_per_s"] for h in result.history])),
            "best_epoch": result.metrics["epoch"], "reached": hr >= target_hr, "load_at_start": load}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.render:
        return report(json.loads(Path(args.render).read_text()), args)
    torch.set_num_threads(1)
    ds = Path(args.work) / "ml-100k"
    if not (ds / "schema.json").exists():
        from twotower.distributed.sources import prepare_movielens
        prepare_movielens(ds, "ml-100k", data_dir=args.data_dir, overwrite=True)
    from twotower.model.schema import DatasetSchema
    schema = DatasetSchema.load(ds)
    test, valid = TestQueries(ds, schema, "test"), TestQueries(ds, schema, "valid")
    load_before = wait_for_quiet(args.wait_load, args.wait_max)
    machine = machine_line()
    sk = run_skrec(args, ds, test)
    print(f"scikit-rec: {len(sk['curve'])} epochs (best {sk['best_epoch']}), {sk['wall_s']:.1f} s, "
          f"{sk['rows_per_s']:,.0f} rows/s, test sampled HR@10 {sk['final_hr']:.4f}", flush=True)
    configs = {name: TrainConfig.model_validate({**TWOTOWER_CONFIGS[name], "seed": args.seed})
               for name in args.configs.split(",")}
    plain = [run_plain(args, ds, name, cfg, test, valid, 1, sk["final_hr"], sk["wall_s"])
             for name, cfg in configs.items()]
    fast = plain[-1]
    for t in [int(t) for t in args.threads.split(",") if t.strip() and int(t) != 1]:
        plain.append(run_plain(args, ds, fast["name"], configs[fast["name"]], test, valid, t, sk["final_hr"],
                               sk["wall_s"], stop_at_target=True))
    ray_epochs = fast["reach_epoch"] or fast["equal_wall_epoch"]
    ray_row = None if args.no_ray else run_ray(args, ds, configs[fast["name"]], ray_epochs, sk["final_hr"])
    torch.set_num_threads(1)
    out = {"machine": machine, "load_before": load_before, "load_after": os.getloadavg()[0], "skrec": sk,
           "plain": plain, "ray": ray_row, "argv": sys.argv[1:]}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    return report(out, args)


def report(out: dict, args) -> dict:
    """Print the markdown table of ``out`` and regenerate the docs section when ``--write-docs``."""
    from _vs_skrec_report import render
    text = render(out)
    print(text)
    if args.write_docs:
        write_docs_section(args.write_docs, "vs_scikit_rec", text)
    return out


if __name__ == "__main__":
    main()
