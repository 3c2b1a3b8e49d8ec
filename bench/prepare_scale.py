"""Preparing a team's own data at scale: raw event parquet -> ``twotower prepare table`` (not a test).

    python bench/prepare_scale.py --sizes 10000000,100000000 --users 1000000 --items 1000000 \\
        --work /tmp/twotower-prepare-scale --baseline-python /tmp/tt-old-venv/bin/python \\
        --write-docs docs/benchmarks.md

For each size N it writes raw tables as a team would bring them (``events/part-*.parquet``: ``user_id``,
``item_id`` int64, ``ts`` in milliseconds, ``device`` string, ``price`` float, in files of 5M rows; a users
table with a categorical ``segment`` and a numeric ``age``; an items table with a categorical ``category``,
a numeric ``price`` and a 16-float ``embedding`` vector), then runs the real job as a subprocess, exactly
as a user would (``python -m twotower.jobs.cli prepare table --spec ... --out ...``, one local Ray
runtime started by the job), under a memory sampler that records every process of the job (the driver,
GCS, raylet, every Ray worker) every 0.5 s. Reported per size: wall seconds, interactions per second,
peak private memory (RSS minus shared pages) and peak RSS per process role -- a Ray worker's RSS also
counts the shared object-store pages it has mapped, which grow with the number of blocks it has
passed along, not with what it holds --, the system's peak used memory above its level before the job,
bytes on disk of the prepared dataset.

The baseline (``--baseline-python``: a Python whose ``twotower`` is the code before the spec job, e.g.
``git worktree add /tmp/tt-old 91a6481 && python -m venv --system-site-packages /tmp/tt-old-venv &&
/tmp/tt-old-venv/bin/pip install --no-deps -e /tmp/tt-old``) prepares the smallest size's events the way
``twotower prepare movielens`` did: every interaction in one process (pandas), per-row ``history`` (50
items) and ``seen_items`` written to disk. Its wall time, peak memory and bytes on disk sit beside the
job's in the same run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MemorySampler, fmt_bytes, machine_line, write_docs_section  # noqa: E402

ROWS_PER_FILE = 5_000_000
DIM = 16
BASELINE = """
import sys, time, numpy as np, pandas as pd, pyarrow.parquet as pq
from twotower.data.movielens import MovieLensData
from twotower.data.prepare import write_movielens
raw, out = sys.argv[1], sys.argv[2]
t0 = time.time()
ev = pq.read_table(raw + "/events", columns=["user_id", "item_id", "ts"]).to_pandas()
ratings = pd.DataFrame({"user_id": ev.user_id, "item_id": ev.item_id, "rating": np.float32(1.0),
                        "timestamp": ev.ts // 1000})
del ev
items = pq.read_table(raw + "/items.parquet", columns=["item_id"]).to_pandas()
items = pd.DataFrame({"item_id": items.item_id, "title": "", "year": 0, "genres": [[]] * len(items)})
write_movielens(out, MovieLensData("bench", ratings, None, items), history_length=50, overwrite=True)
print("seconds", time.time() - t0)
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000000,100000000", help="interaction counts, comma-separated")
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--block-rows", type=int, default=2_000_000, help="the spec's block_rows (memory bound)")
    p.add_argument("--work", default="/tmp/twotower-prepare-scale")
    p.add_argument("--baseline-python", help="a Python with the pre-spec twotower (see the docstring)")
    p.add_argument("--keep", action="store_true", help="keep raw and prepared data (else deleted after each size)")
    p.add_argument("--write-docs", help="regenerate this script's section of this file (docs/benchmarks.md)")
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def write_raw(root: Path, n: int, users: int, items: int, seed: int = 0) -> None:
    """Raw tables of ``n`` events (module docstring): Zipf-like item popularity, uniform users."""
    rng = np.random.default_rng(seed)
    (root / "events").mkdir(parents=True, exist_ok=True)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    cdf = np.cumsum(popularity / popularity.sum())
    for k, lo in enumerate(range(0, n, ROWS_PER_FILE)):
        m = min(ROWS_PER_FILE, n - lo)
        item = np.minimum(np.searchsorted(cdf, rng.random(m)), items - 1) + 1
        pq.write_table(pa.table({
            "user_id": rng.integers(1, users + 1, m), "item_id": rng.permutation(items)[item - 1] + 1,
            "ts": 1_600_000_000_000 + rng.integers(0, 365 * 86_400_000, m),
            "device": pa.array(np.array(["web", "ios", "android"])[rng.integers(0, 3, m)]),
            "price": rng.gamma(2.0, 20.0, m)}), root / "events" / f"part-{k:05d}.parquet")
    pq.write_table(pa.table({"user_id": np.arange(1, users + 1), "segment": rng.integers(0, 20, users).astype(str),
                             "age": rng.integers(16, 80, users).astype(np.float64)}), root / "users.parquet")
    emb = rng.normal(size=(items, DIM)).astype(np.float32)
    pq.write_table(pa.table({"item_id": np.arange(1, items + 1), "category": rng.integers(0, 500, items).astype(str),
                             "price": rng.gamma(2.0, 20.0, items),
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), DIM)}),
                   root / "items.parquet")
    spec = {"name": f"bench-{n}", "block_rows": None,
            "interactions": {"path": "events/", "user_id": "user_id", "item_id": "item_id", "timestamp": "ts"},
            "context": {"features": {"device": {"kind": "categorical"}, "price": {"kind": "numeric"}}},
            "users": {"path": "users.parquet", "id": "user_id",
                      "features": {"segment": {"kind": "categorical"}, "age": {"kind": "numeric"}}},
            "items": {"path": "items.parquet", "id": "item_id",
                      "features": {"category": {"kind": "categorical"}, "list_price": {"kind": "numeric", "column": "price"},
                                   "embedding": {"kind": "vector", "dim": DIM}}}}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measured(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` under the memory sampler; raises CalledProcessError (with the log's tail) on failure."""
    print("  " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with MemorySampler() as mem, log.open("w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd, output=log.read_text()[-3000:])
    private = {title: size for title, _, size in mem.private_by_role()}
    return {"seconds": time.perf_counter() - t0, "system_peak": mem.system_peak_bytes,
            "processes": [(t, n, rss, private.get(t, 0)) for t, n, rss in mem.by_role()]}


def one_size(n: int, args, baseline: bool) -> dict:
    work = Path(args.work)
    raw, out = work / f"raw-{n}", work / f"prepared-{n}"
    t0 = time.perf_counter()
    write_raw(raw, n, args.users, args.items)
    spec = yaml.safe_load((raw / "spec.yaml").read_text()) | {"block_rows": args.block_rows}
    (raw / "spec.yaml").write_text(yaml.safe_dump(spec))
    row = {"interactions": n, "raw_bytes": du(raw), "generate_seconds": time.perf_counter() - t0}
    row["job"] = measured([sys.executable, "-m", "twotower.jobs.cli", "prepare", "table", "--spec",
                           str(raw / "spec.yaml"), "--out", str(out), "--overwrite"], work / f"prepare-{n}.log")
    row["job"]["bytes"] = du(out)
    row["stats"] = {k: v for k, v in json.loads((out / "stats.json").read_text()).items() if k != "settings"}
    if baseline:
        old = work / f"old-{n}"
        row["baseline"] = measured([args.baseline_python, "-c", BASELINE, str(raw), str(old)], work / f"old-{n}.log")
        row["baseline"]["bytes"] = du(old)
        shutil.rmtree(old, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(raw, ignore_errors=True), shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({k: v for k, v in row.items() if k != "stats"}, default=str)[:2000], flush=True)
    return row


def render(rows: list[dict], args, machine: str) -> str:
    cmd = "python bench/prepare_scale.py " + " ".join(sys.argv[1:])
    lines = ["## Prepare at scale: a team's raw events through `twotower prepare table`", "", f"Command: `{cmd}`", "",
             f"Machine: {machine}.", f"Data: {args.users:,} users, {args.items:,} items (users table: categorical "
             f"+ numeric; items table: categorical + numeric + {DIM}-float vector; context: device, price); "
             f"`block_rows` {args.block_rows:,}.", "",
             "| interactions | how | wall s | interactions/s | largest private memory (RSS - shared) | system peak "
             "| on disk | raw parquet |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for how, key in (("spec job (Ray Data)", "job"), ("in-process, per-row history (before)", "baseline")):
            if key not in r:
                continue
            m = r[key]
            top = max(m["processes"], key=lambda p: p[3]) if m["processes"] else ("", 0, 0, 0)
            top = ("in-process preparation", *top[1:]) if key == "baseline" else top
            lines.append(f"| {r['interactions']:,} | {how} | {m['seconds']:.0f} | {r['interactions'] / m['seconds']:,.0f} | "
                         f"{fmt_bytes(top[3])} (`{top[0]}`) | {fmt_bytes(m['system_peak'])} | {fmt_bytes(m['bytes'])} | "
                         f"{fmt_bytes(r['raw_bytes'])} |")
    lines += ["", "Peak memory per process role (spec job; the largest process of each role):", "",
              "| interactions | process | count | private (RSS - shared) | RSS |", "|---|---|---|---|---|"]
    for r in rows:
        for title, count, rss, private in sorted(r["job"]["processes"], key=lambda p: -p[3])[:8]:
            lines.append(f"| {r['interactions']:,} | `{title}` | {count} | {fmt_bytes(private)} | {fmt_bytes(rss)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    machine = machine_line()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = [one_size(n, args, baseline=bool(args.baseline_python) and k == 0) for k, n in enumerate(sizes)]
    text = render(rows, args, machine)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2, default=str))
    if args.write_docs:
        write_docs_section(args.write_docs, "prepare_scale", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
