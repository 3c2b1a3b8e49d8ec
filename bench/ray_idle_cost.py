"""What an idle training Ray runtime costs the plain loop's step on this machine.

Starts the runtime a local ``twotower train`` starts (``trainer.start_local_ray``) with a Ray Train fit
whose one worker sleeps (``TorchTrainer`` for ``--fit dash``: the runtime with the dashboard and Ray
Train's cluster guards, as before ``trainer.lean_fit``; ``LeanTorchTrainer`` for ``--fit lean``), then
runs the plain loop (``_common.plain_train``, ML-1M, default model) in another process and, every
``--window`` seconds, stops a group of the runtime's processes (SIGSTOP) or lets them run (SIGCONT).
Prints, per group, the loop's median examples/s with the group running divided by with it stopped,
for each round and their median. Groups: ``all``; ``dash`` (dashboard processes); ``core`` (GCS,
raylet); ``actors`` (every other Ray process but idle workers and the training worker); ``idle``;
``worker`` (the sleeping training worker). A stop lasts one window; keep it under 15 s (Ray's health
checks).

    python bench/ray_idle_cost.py --dataset DIR --groups all,core,actors --rounds 5
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="prepared dataset directory (e.g. ML-1M)")
    p.add_argument("--groups", default="all")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--window", type=float, default=10.0, help="seconds per stopped / running window")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the plain loop's torch threads")
    p.add_argument("--fit", choices=("lean", "dash"), default="lean")
    p.add_argument("--role", choices=("main", "runtime", "loop"), default="main", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def runtime(fit: str) -> None:
    """The idle runtime: prints READY once the training worker runs, then sleeps until killed."""
    from ray.train import ScalingConfig

    from twotower.distributed.config import TrainConfig
    from twotower.distributed.lean_trainer import trainer_class
    from twotower.distributed.trainer import start_local_ray

    cfg = TrainConfig(ray_dashboard=fit == "dash", cpus_per_worker=float(os.cpu_count() or 1))
    start_local_ray(cfg)

    def sleep(config):
        print("READY", flush=True)
        time.sleep(86_400)

    trainer_class(fit == "lean")(sleep, scaling_config=ScalingConfig(
        num_workers=1, resources_per_worker={"CPU": cfg.cpus_per_worker})).fit()


def loop(dataset: str, threads: int) -> None:
    """The plain loop, printing ``unix_time examples_per_s`` every 20 steps until killed."""
    import torch

    torch.set_num_threads(threads)
    from _common import build_model, load_split_tensors, plain_train
    from twotower.distributed.config import TrainConfig

    cfg = TrainConfig()
    model, schema = build_model(dataset, cfg)
    data = load_split_tensors(dataset, "train", schema)
    last = [time.perf_counter(), 0]

    def on_steps(run) -> bool:
        now = time.perf_counter()
        print(f"{time.time():.3f} {(run.examples - last[1]) / (now - last[0]):.1f}", flush=True)
        last[:] = [time.perf_counter(), run.examples]
        return False

    plain_train(model, cfg, data, epochs=10_000, every=20, on_steps=on_steps)


def group_of(cmdline: str) -> str:
    """The group of a Ray process, from its command line (process title)."""
    if "dashboard" in cmdline and "DashboardAgent" not in cmdline:
        return "dash"
    if "gcs_server" in cmdline or "raylet" in cmdline:
        return "core"
    if cmdline.startswith("ray::IDLE"):
        return "idle"
    if cmdline.startswith("ray::RayTrainWorker"):
        return "worker"
    return "actors" if cmdline.startswith("ray::") else "other"


def members(session: int, group: str) -> list:
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if os.getsid(p.pid) == session and (group == "all" or group_of(" ".join(p.info["cmdline"] or [])) == group):
                out.append(p)
        except (OSError, psutil.Error):
            continue
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.role == "runtime":
        runtime(args.fit)
        return 0
    if args.role == "loop":
        loop(args.dataset, args.threads)
        return 0
    me = [sys.executable, __file__, "--dataset", args.dataset, "--threads", str(args.threads), "--fit", args.fit]
    rt = subprocess.Popen(me + ["--role", "runtime"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          start_new_session=True)
    try:
        for line in rt.stdout:
            if "READY" in line:
                break
        else:
            raise RuntimeError(f"the idle runtime (--fit {args.fit}) exited with code {rt.wait()} before its "
                               f"training worker ran")
        time.sleep(10)                                          # the fit's start-up settles
        rates: list[tuple[float, float]] = []
        lp = subprocess.Popen(me + ["--role", "loop"], stdout=subprocess.PIPE, text=True)
        threading.Thread(target=lambda: [rates.append(tuple(map(float, s.split()))) for s in lp.stdout],
                         daemon=True).start()
        time.sleep(25)                                          # tensors loaded, steps running
        windows = []
        for _ in range(args.rounds):
            for group in args.groups.split(","):
                procs = members(os.getsid(rt.pid), group)
                for p in procs:
                    p.send_signal(signal.SIGSTOP)
                windows.append((group, "stopped", time.time(), time.time() + args.window))
                time.sleep(args.window)
                for p in procs:
                    p.send_signal(signal.SIGCONT)
                windows.append((group, "running", time.time(), time.time() + args.window))
                time.sleep(args.window)
        lp.kill()
    finally:
        try:
            os.killpg(rt.pid, signal.SIGINT)                    # the runtime's session: its Ray processes too
            rt.wait(60)
        except ProcessLookupError:                              # nothing of it left
            pass
        except subprocess.TimeoutExpired:
            os.killpg(rt.pid, signal.SIGKILL)

    def median_rate(a: float, b: float) -> float:
        xs = [r for t, r in rates if a + 1.5 <= t <= b]       # skip the window's first 1.5 s
        return statistics.median(xs) if xs else float("nan")

    print(f"plain loop, {args.threads} torch threads, beside an idle training runtime ({args.fit}); "
          f"{args.window:g} s windows")
    for group in args.groups.split(","):
        mine = [w for w in windows if w[0] == group]
        ratios = [median_rate(*mine[i + 1][2:]) / median_rate(*mine[i][2:]) for i in range(0, len(mine), 2)]
        print(f"{group}: running / stopped " + " ".join(f"{r:.2f}" for r in ratios)
              + f"; median {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
