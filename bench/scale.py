"""How cost grows with interactions: prepare, one training epoch and the index build (not a test).

    python bench/scale.py --sizes 1000000,10000000,50000000 --users 1000000 --items 1000000 \\
        --work /tmp/twotower-scale --write-docs docs/benchmarks.md

For each size N (interactions) it runs the real jobs as subprocesses, exactly as a user would:

1. ``twotower prepare synthetic --users U --items I --interactions N --split temporal`` (valid and test
   fractions chosen so each holds about ``--eval-rows`` interactions: full-ranking validation over a 1M
   catalogue took ~13 ms per query here, and it is not what this benchmark measures);
2. ``twotower train --num-workers 2 --epochs 1`` with the default model (batch 1024 per worker), then
   the epoch's training seconds and examples/s from the run's ``metrics.csv``; ``--max-steps`` caps
   the steps of the largest sizes, and the epoch time is then extrapolated from the measured
   examples/s (marked "extrapolated" in the table);
3. ``twotower index --shards 2 --factory IVF1024,Flat`` over the whole catalogue (depends on items,
   not on N: the same work at every size, a control).

Memory is sampled every 0.5 s for every process of each stage (the job's driver and all Ray
processes it starts): the table gives the peak of the system's used memory above its level before
the stage (the figure to compare with a RAM budget: per-process RSS double-counts shared Ray
object-store pages) and the largest single-process peak RSS. Growth is reported as the ratio of each
figure to the smallest size's, next to the ratio of the sizes.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MemorySampler, fmt_bytes, machine_line, write_docs_section  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000000,10000000,50000000", help="interaction counts, comma-separated")
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--work", default="/tmp/twotower-scale")
    p.add_argument("--eval-rows", type=int, default=2000, help="about this many valid (and test) interactions")
    p.add_argument("--max-steps", default="", help="per-size cap on steps per worker, e.g. '50000000:2000'")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--stages", default="prepare,train,index")
    p.add_argument("--keep", action="store_true", help="keep the prepared datasets (else delete after use)")
    p.add_argument("--write-docs", help="regenerate this file's scale section (docs/benchmarks.md)")
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def run_stage(name: str, cmd: list[str], log: Path) -> dict:
    """Run one job as a subprocess under the memory sampler; raises CalledProcessError on failure."""
    print(f"  {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with MemorySampler() as mem, log.open("w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise subprocess.CalledProcessError(proc.returncode, cmd, output=tail)
    roles = mem.by_role()
    return {"seconds": seconds, "system_peak": mem.system_peak_bytes,
            "max_process": roles[0] if roles else ("", 0, 0), "processes": roles}


def one_size(n: int, args, caps: dict[int, int]) -> dict:
    work = Path(args.work)
    ds, runs, index = work / f"data-{n}", work / "runs", work / f"index-{n}"
    tw = [sys.executable, "-m", "twotower.jobs.cli"]
    frac = min(0.1, args.eval_rows / n)
    row: dict = {"interactions": n}
    stages = args.stages.split(",")
    if "prepare" in stages:
        row["prepare"] = run_stage("prepare", tw + [
            "prepare", "synthetic", "--users", str(args.users), "--items", str(args.items), "--interactions", str(n),
            "--split", "temporal", "--valid-fraction", f"{frac:.8f}", "--test-fraction", f"{frac:.8f}",
            "--out", str(ds), "--overwrite", "-q"], work / f"prepare-{n}.log")
        stats = json.loads((ds / "stats.json").read_text())
        row["rows"] = stats["rows"]
        row["dataset_bytes"] = sum(f.stat().st_size for f in ds.rglob("*") if f.is_file())
    run_name = f"scale-{n}-{time.strftime('%H%M%S')}"
    if "train" in stages:
        cap = caps.get(n)
        overrides = ["patience=0", "stall_timeout_s=3600"] + ([f"max_steps_per_epoch={cap}"] if cap else [])
        row["train"] = run_stage("train", tw + [
            "train", "--dataset", str(ds), "--num-workers", str(args.num_workers), "--epochs", "1",
            "--out", str(runs), "--run-name", run_name, *overrides], work / f"train-{n}.log")
        metrics = next(csv.DictReader((runs / run_name / "metrics.csv").open()))
        steps, eps = int(metrics["steps"]), float(metrics["examples_per_s"])
        train_rows = row.get("rows", {}).get("train")
        examples = steps * 1024 * args.num_workers
        row["train"].update(steps_per_worker=steps, examples_per_s=eps, train_seconds=examples / eps,
                            capped=bool(cap),
                            epoch_seconds=(train_rows / eps) if train_rows else examples / eps,
                            valid_recall10=float(metrics.get("valid_recall@10", "nan")))
    if "index" in stages and (runs / run_name / "best_checkpoint").exists():
        row["index"] = run_stage("index", tw + [
            "index", "--checkpoint", str(runs / run_name / "best_checkpoint"), "--dataset", str(ds),
            "--out", str(index), "--shards", "2", "--factory", "IVF1024,Flat", "--no-embeddings", "--overwrite",
            "-q"], work / f"index-{n}.log")
    if not args.keep:
        shutil.rmtree(ds, ignore_errors=True)
        shutil.rmtree(index, ignore_errors=True)
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    caps = {int(k): int(v) for k, v in (c.split(":") for c in args.max_steps.split(",") if c)}
    machine = machine_line()
    rows = []
    for n in sizes:
        print(f"N = {n:,} interactions", flush=True)
        rows.append(one_size(n, args, caps))
        print(json.dumps(rows[-1], default=str)[:2000], flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=1, default=str))
    md = render(rows, args, machine)
    print(md)
    if args.write_docs:
        write_docs_section(args.write_docs, "scale", md)
    return 0


def render(rows: list[dict], args, machine: str) -> str:
    cmd = "python bench/scale.py " + " ".join(sys.argv[1:])
    base = rows[0]
    lines = ["## Scale: 1M users, 1M items, growing interactions", "", f"Command: `{cmd}`", "",
             f"Machine: {machine}.", "",
             f"Synthetic data ({args.users:,} users, {args.items:,} items, temporal split, history length 50); "
             f"training: default model, {args.num_workers} workers x batch 1024, one epoch; index: 2 shards "
             "`IVF1024,Flat` over the whole catalogue. Memory = peak system used memory above the level "
             "before the stage (largest single process in brackets).", "",
             "| interactions | train rows | prepare s | prepare memory | epoch s | examples/s | train memory | "
             "index s | index memory |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, t, i = r.get("prepare", {}), r.get("train", {}), r.get("index", {})
        mem = lambda s: f"{fmt_bytes(s['system_peak'])} ({fmt_bytes(s['max_process'][2])})" if s else "-"  # noqa: E731
        epoch = (f"{t['epoch_seconds']:,.0f}" + (" (extrapolated)" if t.get("capped") else "")) if t else "-"
        lines.append(f"| {r['interactions']:,} | {r.get('rows', {}).get('train', 0):,} | "
                     f"{p.get('seconds', float('nan')):,.1f} | {mem(p)} | {epoch} | "
                     f"{t.get('examples_per_s', float('nan')):,.0f} | {mem(t)} | {i.get('seconds', float('nan')):,.1f} | "
                     f"{mem(i)} |")
    if len(rows) > 1:
        lines += ["", "Growth relative to the smallest size:", "",
                  "| interactions | x size | x prepare s | x epoch s | x train memory |", "|---|---|---|---|---|"]
        for r in rows[1:]:
            def ratio(stage, key):
                a, b = base.get(stage, {}).get(key), r.get(stage, {}).get(key)
                return f"{b / a:.2f}" if a and b else "-"
            lines.append(f"| {r['interactions']:,} | {r['interactions'] / base['interactions']:.0f} | "
                         f"{ratio('prepare', 'seconds')} | {ratio('train', 'epoch_seconds')} | "
                         f"{ratio('train', 'system_peak')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
