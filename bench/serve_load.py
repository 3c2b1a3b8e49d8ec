"""Load test of the twotower Serve application against Ray Serve's own floor: latency percentiles and
throughput at fixed concurrency, in one run on one Serve instance.

    python bench/serve_load.py --prepare ml-1m --work /tmp/serve-bench          # prepare, quick-train, index
    python bench/serve_load.py --dataset datasets/ml-1m --modes user_tower --factories 'Flat;IVF64,Flat'

For each concurrency level (default 1, 8, 32) it sends ``--requests`` ``POST /v1/recommend`` requests
(stopping early at ``--time-cap`` seconds) from that many client threads (one ``requests.Session`` each)
and prints p50/p95/p99 latency and requests/s, over the same request bodies, for:

* ``floor``: a no-op Serve app (FastAPI ingress, same proxy, same client) that parses the body and returns
  a canned real answer (same bytes both ways): what Ray Serve itself costs on this machine;
* ``http``: every twotower variant of ``--modes`` x ``--factories`` x ``--shard-counts`` x ``--servings``:
  ``sharded`` (Ingress -> QueryEncoder -> one Searcher per shard) or ``colocated`` (encode and search in the
  Ingress replica, :mod:`twotower.serve.colocated`), deployed one after the other at the same address;
* ``stages``: the median time of each pipeline stage in this process (validate, plan, encode, search +
  merge, shape, JSON), i.e. what a colocated Ingress adds to the floor;
* optionally (``--paths``) ``search`` (``ShardedIndex.search`` of precomputed queries in this process) and
  ``pipeline`` (``twotower.serve.Recommender.recommend`` in this process).

Everything stays on the loopback interface. Without ``--checkpoint`` a model with the default
architecture is trained for ``--train-steps`` steps in-process (latency does not depend on how well it
is trained); indexes are built into ``--work``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

TS_RANGE = (956_703_932, 1_046_454_590)      # ML-1M's time span (unix seconds)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", help="prepared dataset directory")
    p.add_argument("--prepare", default="ml-1m", help="MovieLens variant to prepare when --dataset is absent")
    p.add_argument("--checkpoint", help="checkpoint directory (default: quick-train one into --work)")
    p.add_argument("--index", help="index directory (default: build a Flat index into --work)")
    p.add_argument("--work", default="/tmp/twotower-serve-bench", help="where prepared/trained artifacts go")
    p.add_argument("--modes", default="user_tower,trilinear", help="context modes (comma list)")
    p.add_argument("--factories", default="Flat;IVF64,Flat", help="FAISS factories (';' list)")
    p.add_argument("--shard-counts", default="1,2")
    p.add_argument("--servings", default="colocated,sharded")
    p.add_argument("--train-steps", type=int, default=50)
    p.add_argument("--requests", type=int, default=1000, help="requests per concurrency level and path")
    p.add_argument("--time-cap", type=float, default=60.0, help="seconds per concurrency level and path")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    p.add_argument("--paths", default="floor,http,stages",
                   help="floor, http, stages (time per pipeline stage in-process), search, pipeline (comma list)")
    p.add_argument("--replica-cpus", type=float, default=0.5, help="logical CPUs reserved per replica")
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def artifacts(args, mode: str) -> tuple[Path, Path]:
    """(dataset, checkpoint of ``mode``), preparing / training what was not given."""
    work = Path(args.work)
    dataset = Path(args.dataset) if args.dataset else work / args.prepare
    if not (dataset / "schema.json").exists():
        from twotower.distributed.sources import prepare_movielens
        print(f"preparing {args.prepare} into {dataset}", flush=True)
        prepare_movielens(dataset, args.prepare)
    ckpt = Path(args.checkpoint) if args.checkpoint else work / f"checkpoint-{mode}"
    if not (ckpt / "checkpoint.json").exists():
        print(f"training a {mode} model for {args.train_steps} steps into {ckpt}", flush=True)
        quick_train(dataset, ckpt, mode, args.train_steps)
    return dataset, ckpt


def quick_train(dataset: Path, out: Path, mode: str, steps: int) -> None:
    """Default-architecture model, ``steps`` steps of in-batch softmax on the train split, saved to ``out``."""
    import torch

    from twotower.data.splits import read_split_examples
    from twotower.data.tables import load_feature_tables
    from twotower.model.batch import as_tensors
    from twotower.model.checkpoint import save_checkpoint
    from twotower.model.config import ModelConfig
    from twotower.model.loss import compute_loss
    from twotower.model.optim import build_optimizer
    from twotower.model.schema import DatasetSchema
    from twotower.model.twotower import TwoTowerModel

    schema = DatasetSchema.load(dataset)
    torch.manual_seed(0)
    model = TwoTowerModel(schema, ModelConfig(context_mode=mode), *load_feature_tables(dataset))
    cols = read_split_examples(dataset, "train", schema)          # train examples cut from the sequences
    opt, rng = build_optimizer("adam", model, lr=1e-3), np.random.default_rng(0)
    for _ in range(steps):
        rows = rng.integers(0, len(cols["item_idx"]), 512)
        loss = compute_loss(model, as_tensors({k: v[rows] for k, v in cols.items()})).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_checkpoint(model.eval(), out, dataset_dir=str(dataset), extra={"note": f"serve bench, {steps} steps"})


def request_bodies(state, n: int, k: int, seed: int = 0) -> list[dict]:
    """``n`` request bodies: known users drawn uniformly, timestamps uniform over the data's span."""
    raw = {idx: user_id for user_id, idx in state.users.user_vocab.items()}
    rng = np.random.default_rng(seed)
    users = rng.integers(1, state.schema.num_users, n)
    ts = rng.integers(*TS_RANGE, n)
    return [{"user_id": raw[int(u)], "context": {"timestamp": int(t)}, "k": k} for u, t in zip(users, ts)]


def run_level(call, n: int, concurrency: int, time_cap: float) -> dict:
    """Issue calls 0..n-1 from ``concurrency`` threads until done or ``time_cap`` s; latency stats."""
    lat, errors, lock, counter = [], [0], threading.Lock(), iter(range(n))
    deadline = time.perf_counter() + time_cap

    def worker() -> None:
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            ok = call(i)
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                errors[0] += 0 if ok else 1
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - start
    ms = np.asarray(lat) * 1000.0
    return {"concurrency": concurrency, "requests": len(lat), "errors": errors[0], "seconds": round(wall, 2),
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "rps": len(lat) / wall, "load1": round(os.getloadavg()[0], 1)}


def machine() -> str:
    import faiss
    import ray
    import torch
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}, faiss {faiss.__version__}, "
            f"load average at start {load:.1f}")


def report(results: list, name: str, r: dict) -> None:
    results.append({"path": name, **r})
    print(f"{name:40s} c={r['concurrency']:3d}  n={r['requests']:5d} err={r['errors']}  p50 {r['p50_ms']:7.2f} ms  "
          f"p95 {r['p95_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  {r['rps']:8.1f} req/s  (load {r['load1']})", flush=True)


def local_paths(args, levels, paths, results, mode, dataset, ckpt, index_dir) -> None:
    """The in-process ``search`` / ``pipeline`` paths for one model and index."""
    from twotower.serve import Recommender
    from twotower.serve.recommender import plan_recommend
    from twotower.serve.schema import RecommendRequest

    rec = Recommender.load(ckpt, index_dir, dataset)
    bodies = request_bodies(rec.state, args.requests, args.k)
    plans = [plan_recommend(RecommendRequest.model_validate(b), rec.state) for b in bodies]
    queries = rec.encoder.encode([p.query for p in plans])
    calls = {"search": lambda i: rec.index.search(queries[i:i + 1], args.k, exclude=[plans[i].exclude]) is not None,
             "pipeline": lambda i: rec.recommend(**bodies[i]) is not None}
    for path in ("search", "pipeline"):
        if path in paths:
            for c in levels:
                report(results, f"{path} {mode}", run_level(calls[path], len(bodies), c, args.time_cap))


def main(argv=None) -> int:
    args = parse_args(argv)
    levels, paths = [int(c) for c in args.concurrency.split(",")], args.paths.split(",")
    from _serve_variants import build_index, deploy_floor, deploy_variant, stage_times, variants

    import ray
    import requests
    from ray import serve

    from twotower.serve import Recommender
    from twotower.serve.deploy import wait_ready

    todo = variants(args.modes, args.factories, args.shard_counts, args.servings)
    art = {m: artifacts(args, m) for m in dict.fromkeys(v.mode for v in todo)}
    indexes = {v: build_index(Path(args.work) / f"index-{v.mode}-{v.factory.replace(',', '_')}-{v.shards}",
                              art[v.mode][1], art[v.mode][0], v.factory, v.shards) for v in todo}
    dataset, ckpt = art[todo[0].mode]
    first = Recommender.load(ckpt, indexes[todo[0]], dataset)
    bodies = request_bodies(first.state, args.requests, args.k)
    canned = first.recommend(**bodies[0]).model_dump(mode="json")
    results, info = [], machine()
    print(f"machine: {info}\ndataset {dataset}; variants: {', '.join(v.name for v in todo)}", flush=True)
    for mode, (ds, ck) in art.items():
        local_paths(args, levels, paths, results, mode, ds, ck, indexes[next(v for v in todo if v.mode == mode)])
    if "stages" in paths:
        for v in todo:
            if v.serving == "colocated":
                ms = stage_times(Recommender.load(art[v.mode][1], indexes[v], art[v.mode][0]), bodies)
                results.append({"path": f"stages {v.name}", **ms})
                print(f"stages {v.name:30s} " + "  ".join(f"{k} {x:.3f} ms" for k, x in ms.items()), flush=True)

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    base, local = f"http://127.0.0.1:{port}", threading.local()

    def http(route: str):
        def call(i: int) -> bool:
            if not hasattr(local, "s"):
                local.s = requests.Session()
            return local.s.post(f"{base}{route}/v1/recommend", json=bodies[i], timeout=60).status_code == 200
        return call

    def measure(name: str, route: str) -> None:
        run_level(http(route), 50, 4, 30)                                 # warm-up (not recorded)
        for c in levels:
            report(results, name, run_level(http(route), len(bodies), c, args.time_cap))
    try:
        if "floor" in paths:                  # measured again before each mode x factory group (load drifts)
            deploy_floor(canned, args.replica_cpus)
        group = None
        for v in todo if "http" in paths else []:                # one dataset: the same bodies for every mode
            if "floor" in paths and group != (v.mode, v.factory):
                group = (v.mode, v.factory)
                measure(f"floor (before {v.mode}/{v.factory})", "/floor")
            deploy_variant(v, art[v.mode][1], art[v.mode][0], indexes[v], args.replica_cpus)
            wait_ready(f"{base}{v.route}", 300)
            measure(v.name, v.route)
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": info, "args": vars(args), "results": results}, indent=2))
    return 0


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    raise SystemExit(main())
