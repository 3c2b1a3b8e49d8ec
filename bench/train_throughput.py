"""Training throughput: plain PyTorch loop vs Ray Train with 1 and 2 workers (not a test).

    python bench/train_throughput.py --prepare ml-1m --work /tmp/twotower-bench-tt --repeat 2 \\
        --write-docs docs/benchmarks.md

Three configurations train the default model (``TrainConfig()`` defaults: user_tower, history mean
pooling, in-batch softmax with logQ, Adam) on the same prepared dataset with the same per-worker batch
(``--batch-size``, default 1024), for ``--epochs`` full epochs each (default 1; or ``--max-steps``
steps per epoch):

* ``plain``: a single-process PyTorch loop over in-memory tensors (``_common.plain_train``): the
  ceiling, without Ray Data, DDP or Ray Train; torch uses every core;
* ``ray-1``: ``TwoTowerTrainer`` with 1 worker holding every core (``cpus_per_worker`` = cores);
* ``ray-2``: ``TwoTowerTrainer`` with 2 workers (DDP, gloo) of ``cores / 2`` CPUs each;
* ``plain@T``: the plain loop on T torch threads;
* ``ray-W@T``: as ``ray-W`` with ``torch_threads: T`` (``ray-1@1`` is what a lone worker computed on
  before ``torch_threads``: Ray starts it with ``OMP_NUM_THREADS`` = its whole CPUs);
* ``ray-W...:stream``: as ``ray-W...`` with ``train_cache_gib: 0``: every pass re-runs the Ray Data
  pipeline (by default a worker replays its first pass from memory when it fits: ``train_cache_gib``);
* ``ray-W...:dash``: as ``ray-W...`` with ``ray_dashboard: true``: the local runtime with Ray's dashboard,
  and the fit with Ray Train's placement-group cleaner and preemption watcher (what ``ray-W`` ran
  before twotower left them out of the runtimes it starts; ``trainer.lean_fit``);
* ``ingest`` (not in the default ``--configs``): the Ray Data training pipeline drained without a model.

Examples/s counts training examples over training seconds (for Ray: the examples and seconds the
loop reports per epoch, which include waiting for Ray Data batches but not validation nor the ~30 s
of start-up; the wall time of the whole ``fit`` is printed beside it, and ``data_wait_s``: the
seconds the training thread was blocked waiting for the next batch; "while not waiting" divides the
examples by the training seconds minus that wait, which leaves the step's own rate). With
``--epochs`` above 1 the table gives epoch 1 (for Ray: the pipeline's start, 5-7 s of waiting for the
first batch on 2 cores, and the pass that fills the example cache) and epochs 2 on (steady state: the
plain loop's figure likewise leaves out loading its tensors) apart, and all epochs together; ratios,
rounds and the median use epochs 2 on. ``--repeat N`` runs
the list of configurations N times in turn, so that each Ray row has plain rows on either side; the
table shows each row's median round and every round's figure (the host's speed drifts by 20% or more
within minutes, so single runs minutes apart do not compare). Peak resident memory is sampled
every 0.5 s for every process of the run (driver and all Ray processes) and printed per role;
"system" is the peak of the machine's used memory above its level before the run.

``--device cuda`` runs the same on a GPU (plain loop on the GPU; Ray workers with ``use_gpu``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import (MemorySampler, build_model, fmt_bytes, load_split_tensors, machine_line,  # noqa: E402
                     plain_train, write_docs_section)
from twotower.distributed.config import TrainConfig  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", help="prepared dataset directory (default: prepare --prepare into --work)")
    p.add_argument("--prepare", default="ml-1m", help="MovieLens variant to prepare when --dataset is absent")
    p.add_argument("--work", default="/tmp/twotower-bench-tt")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=1, help="epochs per configuration (above 1: epoch 1 and the "
                                                         "later epochs are reported apart)")
    p.add_argument("--max-steps", type=int, default=None, help="steps per epoch (default: a whole pass)")
    p.add_argument("--configs", default="plain,ray-1,ray-2")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds of --configs, interleaved; the tables give each configuration's median round")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--write-docs", help="regenerate this file's train_throughput section (docs/benchmarks.md)")
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def dataset_dir(args) -> Path:
    if args.dataset:
        return Path(args.dataset)
    path = Path(args.work) / args.prepare
    if not (path / "schema.json").exists():
        from twotower.distributed.sources import prepare_movielens
        prepare_movielens(path, args.prepare, overwrite=True)
    return path


def run_plain(ds: Path, cfg: TrainConfig, args, threads: int | None = None) -> dict:
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    model, schema = build_model(ds, cfg)
    data = load_split_tensors(ds, "train", schema)
    if args.device == "cuda":
        model, data = model.cuda(), {k: v.cuda() for k, v in data.items()}
    t0, epochs, done = time.perf_counter(), [], (0, 0.0)

    def on_epoch(epoch, run):                                  # per-epoch examples and seconds
        nonlocal done
        if args.device == "cuda":
            torch.cuda.synchronize()
        epochs.append({"examples": run.examples - done[0], "seconds": run.seconds - done[1]})
        done = (run.examples, run.seconds)
        return False

    run = plain_train(model, cfg, data, epochs=args.epochs, seed=cfg.seed, on_epoch=on_epoch,
                      max_steps_per_epoch=args.max_steps)
    return {"epochs": epochs, "steps": run.steps, "wall_s": time.perf_counter() - t0,
            "threads": torch.get_num_threads()}


def run_ray(ds: Path, cfg: TrainConfig, workers: int, args, threads: int | None = None,
            stream: bool = False, dashboard: bool = False) -> dict:
    from twotower.distributed.trainer import TwoTowerTrainer
    cores = os.cpu_count() or 1
    cfg = cfg.model_copy(update={"num_workers": workers, "cpus_per_worker": max(cores // workers, 1),
                                 "torch_threads": threads, "train_cache_gib": 0.0 if stream else cfg.train_cache_gib,
                                 "ray_dashboard": dashboard,
                                 "use_gpu": args.device == "cuda",
                                 "run_name": f"ray-{workers}-{time.strftime('%H%M%S')}",
                                 "storage_path": str(Path(args.work) / "runs")})
    t0 = time.perf_counter()
    result = TwoTowerTrainer(cfg).fit(ds)
    epochs = [{"examples": e["examples_per_s"] * e["train_seconds"], "seconds": e["train_seconds"],
               "data_wait_s": e["data_wait_s"]} for e in result.history]
    return {"epochs": epochs, "steps": sum(e["steps"] for e in result.history) * workers,
            "wall_s": time.perf_counter() - t0, "threads": " x ".join(str(t) for t in result.torch_threads)}


def run_ingest(ds: Path, cfg: TrainConfig, args) -> dict:
    """Ray Data alone: the training pipeline (``build_datasets``' train split, ``streaming_split(1)``,
    ``iter_train_batches``) drained in this process without a model: how fast Ray Data can feed one
    worker on this machine (a rate far above the plain loop's means Ray's cost is CPU taken from the
    step, not waiting for data)."""
    import ray
    from twotower.distributed.data import build_datasets, iter_train_batches
    from twotower.distributed.local_ray import start_ray
    from twotower.model.schema import DatasetSchema
    owned = start_ray(min_cpus=(os.cpu_count() or 1) + 2)
    try:
        train = build_datasets(ds, DatasetSchema.load(ds), seed=cfg.seed, model=cfg.model)["train"]
        shard = train.streaming_split(1, equal=True)[0]
        t0, steps, examples = time.perf_counter(), 0, 0
        for batch in iter_train_batches(shard, cfg.batch_size, seed=cfg.seed, pass_number=1, rank=0):
            steps, examples = steps + 1, examples + len(batch["user_idx"])
            if args.max_steps and steps >= args.max_steps:
                break
        wall = time.perf_counter() - t0
    finally:
        if owned is not None:
            ray.shutdown()
    return {"epochs": [{"examples": examples, "seconds": wall}], "steps": steps, "wall_s": wall, "threads": "-"}


def main(argv=None) -> int:
    args = parse_args(argv)
    ds = dataset_dir(args)
    cfg = TrainConfig(batch_size=args.batch_size, epochs=args.epochs, patience=0, max_steps_per_epoch=args.max_steps)
    machine = machine_line()
    runs = [run_config(name, ds, cfg, args) for _ in range(args.repeat) for name in args.configs.split(",")]
    rows = [median_round([r for r in runs if r["config"] == name]) for name in args.configs.split(",")]
    base = {r["config"]: r["examples_per_s"] for r in rows}
    md = render(rows, base, args, ds, machine)
    print(md)
    if args.write_docs:
        write_docs_section(args.write_docs, f"train_throughput_{args.device}", md)
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=1, default=str))
    return 0


def median_round(rounds: list[dict]) -> dict:
    """The round with the median ``examples_per_s`` (the lower middle for an even count), with every
    round's as ``rounds``."""
    ordered = sorted(rounds, key=lambda r: r["examples_per_s"])
    return {**ordered[(len(ordered) - 1) // 2], "rounds": [r["examples_per_s"] for r in rounds]}


def rate(epochs: list[dict]) -> float:
    """Examples per training second over ``epochs`` (dicts of ``examples`` and ``seconds``)."""
    return sum(e["examples"] for e in epochs) / max(sum(e["seconds"] for e in epochs), 1e-9)


def summarize(res: dict) -> dict:
    """Add the rates of a run's ``epochs``: ``first`` (epoch 1), ``later`` (epochs 2 on; None for one
    epoch), ``all``, and ``examples_per_s``, the figure compared: ``later`` when there is one, else
    ``first``; for Ray, ``data_wait_s`` and ``busy`` (examples/s while not waiting) over the same epochs."""
    epochs = res["epochs"]
    compared = epochs[1:] or epochs
    res.update(first=rate(epochs[:1]), later=rate(epochs[1:]) if len(epochs) > 1 else None, all=rate(epochs),
               examples_per_s=rate(compared))
    if "data_wait_s" in epochs[0]:
        wait = sum(e["data_wait_s"] for e in compared)
        seconds = sum(e["seconds"] for e in compared) - wait
        res.update(data_wait_s=wait, busy=sum(e["examples"] for e in compared) / max(seconds, 1e-9))
    return res


def run_config(name: str, ds: Path, cfg: TrainConfig, args) -> dict:
    """One configuration once, with its memory and CPU per process role."""
    with MemorySampler() as mem:
        if name.startswith("plain"):                      # plain or plain@T (T torch threads)
            res = run_plain(ds, cfg, args, int(name.partition("@")[2] or 0) or None)
        elif name == "ingest":
            res = run_ingest(ds, cfg, args)
        else:                                              # ray-W[@T][:stream|:dash]
            spec, _, mode = name.partition(":")
            workers, _, threads = spec.split("-")[1].partition("@")
            res = run_ray(ds, cfg, int(workers), args, int(threads) if threads else None, stream=mode == "stream",
                          dashboard=mode == "dash")
    res.update(config=name, system_peak=mem.system_peak_bytes, processes=mem.by_role(), cpu=mem.cpu_by_role())
    summarize(res)
    later = f", epochs 2+ {res['later']:,.0f}" if res["later"] is not None else ""
    print(f"{name}: epoch 1 {res['first']:,.0f} examples/s{later}, {res['steps']} steps, wall {res['wall_s']:.1f} s, "
          f"system peak +{fmt_bytes(res['system_peak'])}", flush=True)
    return res


def plain_of(config: str) -> str:
    """The plain-loop configuration a row compares with: ``plain@T`` for ``...@T``, else ``plain``."""
    config = config.partition(":")[0]
    return "plain@" + config.partition("@")[2] if "@" in config else "plain"


def render(rows: list[dict], base: dict, args, ds: Path, machine: str) -> str:
    by_name = {r["config"]: r for r in rows}
    compared = "epochs 2 on (steady state)" if args.epochs > 1 else "epoch 1"
    cmd = "python bench/train_throughput.py " + " ".join(sys.argv[1:])
    lines = [f"## Training throughput ({args.device})", "", f"Command: `{cmd}`", "", f"Machine: {machine}.",
             f"Dataset: `{ds.name}`; default model, batch {args.batch_size} per worker; {args.epochs} epoch(s) of "
             f"{'a whole pass' if not args.max_steps else f'{args.max_steps} steps'} per configuration; "
             f"{args.repeat} round(s) of the configurations, interleaved; each row is its median round "
             f"(CPU and memory tables too). Compared: {compared}.", "",
             "| configuration | torch threads | examples/s epoch 1 | epochs 2 on | all epochs | each round "
             "(compared) | vs plain, same threads (compared) | compared, while not waiting for data | waiting "
             "for data s (compared) | fit wall s | system peak memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["examples_per_s"] / base.get(plain_of(r["config"]), float("nan"))
        wait, busy = (f"{r['data_wait_s']:.1f}", f"{r['busy']:,.0f}") if "busy" in r else ("-", "-")
        each = " / ".join(f"{x:,.0f}" for x in r.get("rounds", [r["examples_per_s"]]))
        later = "-" if r["later"] is None else f"{r['later']:,.0f}"
        lines.append(f"| {r['config']} | {r['threads']} | {r['first']:,.0f} | {later} | {r['all']:,.0f} | {each} | "
                     f"{ratio:.2f}x | {busy} | {wait} | {r['wall_s']:.1f} | +{fmt_bytes(r['system_peak'])} |")
    paired = {r["config"]: [x / y for x, y in zip(r["rounds"], by_name[plain_of(r["config"])]["rounds"])]
              for r in rows if r["config"].startswith("ray") and plain_of(r["config"]) in by_name}
    if paired and args.repeat > 1:
        lines += ["", "Ratio to the plain loop on the same threads, round by round: " + "; ".join(
            f"{name} {', '.join(f'{x:.2f}x' for x in ratios)}" for name, ratios in paired.items()) + "."]
    if "ray-1" in base and "ray-2" in base:
        lines += ["", f"Scaling ray-2 / ray-1: **{base['ray-2'] / base['ray-1']:.2f}x**; framework overhead "
                      f"ray-1 / plain: **{base['ray-1'] / base.get('plain', float('nan')):.2f}x**."]
    lines += ["", "CPU seconds per process role during each configuration (user + system, sampled every 0.5 s; "
              "the largest 8):", "", "| configuration | process | count | CPU s |", "|---|---|---|---|"]
    for r in rows:
        for title, count, cpu in r.get("cpu", [])[:8]:
            lines.append(f"| {r['config']} | `{title}` | {count} | {cpu:.1f} |")
    lines += ["", "Peak resident memory per process (largest per role):", "",
              "| configuration | process | count | peak RSS |", "|---|---|---|---|"]
    for r in rows:
        for title, count, rss in r["processes"][:6]:
            lines.append(f"| {r['config']} | `{title}` | {count} | {fmt_bytes(rss)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
