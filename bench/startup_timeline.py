"""Where a Ray Train run's start-up goes: the task and actor timeline of a short ``fit`` (not a test).

    python bench/startup_timeline.py --dataset /work/seq-data/ml-1m [--steps 30] [--threads 1]

Starts the local Ray runtime itself (as ``TwoTowerTrainer.fit`` would), fits the default model for one
epoch of ``--steps`` steps with 1 worker, then reads every task and actor-task event of the run from
Ray's state API (``ray.util.state.list_tasks(detail=True)``) before shutting Ray down. Prints, in
seconds since ``fit`` was called, when each start-up task was submitted, started running (for an actor:
its process started and imported what it needs) and finished: the fit task, the TrainController, the
worker group, Ray Train's DatasetManager, the Ray Data SplitCoordinators, and the first read and
``cut_chunks`` tasks; then the first epoch's ``data_wait_s`` (mostly the wait for the first batch).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray  # noqa: E402

from _common import machine_line  # noqa: E402
from twotower.distributed.config import TrainConfig  # noqa: E402
from twotower.distributed.trainer import TwoTowerTrainer, start_local_ray  # noqa: E402

SHOWN = ("_fit_task", "TrainController.__init__", "RayTrainWorker.__init__", "RayTrainWorker.run_train_fn",
         "DatasetManager.__init__", "DatasetManager.get_dataset_shard", "SplitCoordinator.__init__",
         "SplitCoordinator.start_epoch", "ReadParquet", "MapBatches(cut_chunks)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="prepared dataset directory")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the worker")
    p.add_argument("--work", default="/tmp/twotower-bench-startup")
    args = p.parse_args(argv)
    cfg = TrainConfig(epochs=1, patience=0, max_steps_per_epoch=args.steps, torch_threads=args.threads,
                      storage_path=args.work, run_name=f"startup-{time.strftime('%H%M%S')}")
    machine = machine_line()
    start_local_ray(cfg)
    try:
        t0 = time.time()
        result = TwoTowerTrainer(cfg).fit(args.dataset)
        rows = task_rows(t0)
    finally:
        ray.shutdown()
    print(f"Machine: {machine}.\n")
    print("| submitted (s since fit) | task | waiting to run s | running at | finished at |\n|---|---|---|---|---|")
    seen: dict[str, int] = {}
    for start, name, events in rows:
        key = next((s for s in SHOWN if name.startswith(s)), None)
        if key is None or seen.get(key, 0) >= (2 if key.startswith(("SplitCoordinator", "MapBatches")) else 1):
            continue
        seen[key] = seen.get(key, 0) + 1
        wait = fmt(events["RUNNING"] - start if "RUNNING" in events else None)
        print(f"| {start:.2f} | `{name}` | {wait} | {fmt(events.get('RUNNING'))} | {fmt(events.get('FINISHED'))} |")
    print(f"\nFirst epoch: {result.history[0]['data_wait_s']:.2f} s waiting for data, "
          f"{result.history[0]['seconds']:.1f} s in all.")
    return 0


def task_rows(t0: float) -> list[tuple[float, str, dict[str, float]]]:
    """(seconds from ``t0`` to the task's first event, task name, {state: seconds from t0}) per task, sorted."""
    from ray.util.state import list_tasks

    rows = []
    for task in list_tasks(detail=True, limit=10_000, raise_on_missing_output=False):
        events = {e["state"]: e["created_ms"] / 1000 - t0 for e in (task.events or [])}
        if events:
            rows.append((min(events.values()), task.name, events))
    return sorted(rows, key=lambda r: r[0])


def fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
