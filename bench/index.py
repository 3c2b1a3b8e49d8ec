"""Benchmark of the index job and the sharded search on a synthetic catalogue (not a test).

    python bench/index.py --items 1000000 --dim 64 --shards 4 --work /tmp/twotower-bench-index

Catalogue: ``--items`` items in 8 parquet files; a randomly initialised item tower (ID embedding 16,
two categorical features of 32 dims each -> MLP 128 -> ``--dim``, L2-normalised) whose features give
the catalogue cluster structure: 1000 categories x 10 brands per category. Queries: embeddings of
random items plus Gaussian noise of the same norm, re-normalised (a user near a region of the catalogue).

Measured: Ray Data embedding throughput (items/s, the whole stage 1 incl. actor start and parquet
writes), build seconds per shard and in total (stage 2, S parallel Ray tasks of 1 CPU each), and for
each factory recall@10 / recall@100 against NumPy brute force and queries/s at batch 1 and 256 (k=10).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
import torch

from twotower.distributed.index_job import IndexJobConfig, run_index_job
from twotower.index import ShardedIndex, exact_topk, recall_at_k
from twotower.model.checkpoint import save_checkpoint
from twotower.model.config import ModelConfig
from twotower.model.schema import DatasetSchema, Feature
from twotower.model.twotower import TwoTowerModel

FACTORIES = ("Flat", "IVF1024,Flat", "IVF1024,PQ16", "HNSW32")


def make_catalogue(work: Path, n: int, dim: int, seed: int) -> tuple[Path, Path]:
    """Write a synthetic checkpoint and item parquet files; returns (checkpoint dir, items dir)."""
    rng = np.random.default_rng(seed)
    category = np.r_[0, rng.integers(1, 1001, n)]
    brand = np.r_[0, (category[1:] - 1) * 10 + rng.integers(1, 11, n)]
    schema = DatasetSchema(num_users=2, num_items=n + 1, history_length=1, name="synthetic-catalogue",
                           item_features=(Feature("category", "categorical", 1001),
                                          Feature("brand", "categorical", 10001)))
    cfg = ModelConfig(item_embedding_dim=16, feature_embedding_dim=32, final_embedding_dim=dim, hidden_dims=[128],
                      dropout=0.0)
    torch.manual_seed(seed)
    model = TwoTowerModel(schema, cfg, {}, {"category": category, "brand": brand,
                                            "train_count": np.r_[0, rng.integers(1, 100, n)]})
    ckpt = save_checkpoint(model.eval(), work / "checkpoint")
    items = work / "items"
    items.mkdir(parents=True, exist_ok=True)
    for part, rows in enumerate(np.array_split(np.arange(1, n + 1), 8)):
        table = pa.table({"item_idx": pa.array(rows.astype(np.int32)),
                          "item_id": pa.array([f"sku-{i:08d}" for i in rows])})
        pq.write_table(table, items / f"part-{part:05d}.parquet")
    return ckpt, items


def load_embeddings(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pads.dataset(directory, format="parquet", partitioning="hive").to_table(columns=["item_idx", "embedding"])
    idx = table["item_idx"].to_numpy()
    return table["embedding"].combine_chunks().flatten().to_numpy().reshape(len(idx), -1), idx


def qps(index: ShardedIndex, queries: np.ndarray, batch: int, budget_s: float, k: int = 10) -> float:
    """Queries per second over consecutive batches of ``queries`` for at most ~``budget_s`` seconds."""
    done, t0 = 0, time.perf_counter()
    for a in range(0, len(queries) - batch + 1, batch):
        index.search(queries[a:a + batch], k)
        done += batch
        if time.perf_counter() - t0 > budget_s:
            break
    return done / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--queries", type=int, default=1024)
    p.add_argument("--factories", nargs="*", default=list(FACTORIES))
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--work", default="/tmp/twotower-bench-index")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--search-threads", type=int, default=0, help="FAISS OpenMP threads for search (0: default)")
    args = p.parse_args(argv)
    if args.search_threads:
        faiss.omp_set_num_threads(args.search_threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    ckpt, items = make_catalogue(work, args.items, args.dim, args.seed)
    print(f"catalogue + checkpoint written in {time.perf_counter() - t0:.1f}s", flush=True)
    builds, emb_dir = {}, None
    for factory in args.factories:
        out = work / ("index-" + factory.replace(",", "_"))
        cfg = IndexJobConfig(checkpoint=str(ckpt), out=str(out), items=[str(items)], num_shards=args.shards,
                             factory=factory, num_actors=args.actors, overwrite=True, embeddings=emb_dir)
        t0 = time.perf_counter()
        manifest = run_index_job(cfg)
        builds[factory] = {"out": out, "manifest": manifest, "job_seconds": time.perf_counter() - t0}
        print(f"{factory}: job {builds[factory]['job_seconds']:.1f}s {json.dumps(manifest.extra['job']['embed'])} "
              f"build {manifest.extra['job']['build_seconds_total']}s", flush=True)
        if emb_dir is None:
            emb_dir = str(out / "embeddings")
    emb, idx = load_embeddings(Path(emb_dir))
    rng = np.random.default_rng(args.seed + 1)
    base = emb[rng.integers(0, len(emb), args.queries)]
    noise = rng.standard_normal(base.shape).astype(np.float32) / np.sqrt(args.dim)
    queries = base + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    t0 = time.perf_counter()
    truth = exact_topk(emb, queries, 100, item_idx=idx)[1]
    print(f"exact top-100 of {args.queries} queries (NumPy): {time.perf_counter() - t0:.1f}s", flush=True)
    del emb
    rows = []
    for factory, b in builds.items():
        index = ShardedIndex.load(b["out"])
        found = index.search(queries, 100)[1]
        m = b["manifest"]
        size = sum(os.path.getsize(b["out"] / s.index_file) for s in m.shards)
        rows.append({"factory": factory, "search_params": m.search_params,
                     "recall@10": recall_at_k(found[:, :10], truth[:, :10]), "recall@100": recall_at_k(found, truth),
                     "qps_b1": qps(index, queries, 1, 10.0), "qps_b256": qps(index, queries, 256, 20.0),
                     "build_s_per_shard": [s.build_seconds for s in m.shards],
                     "build_s_total": m.extra["job"]["build_seconds_total"], "index_mib": size / 2**20})
        print(json.dumps(rows[-1]), flush=True)
    embed = builds[next(iter(builds))]["manifest"].extra["job"]["embed"]
    result = {"items": args.items, "dim": args.dim, "shards": args.shards, "queries": args.queries,
              "embed": embed, "rows": rows, "load_avg": os.getloadavg(),
              "search_threads": faiss.omp_get_max_threads()}
    print(json.dumps(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    e = r["embed"]
    lines = [f"Search with {r['search_threads']} FAISS thread(s); load average at the end "
             f"{', '.join(f'{x:.1f}' for x in r['load_avg'])} on 2 cores.", "",
             f"Embedding (Ray Data, {r['items']:,} items, d={r['dim']}): {e['items_per_second']:,.0f} items/s "
             f"({e['seconds']:.1f} s incl. actor start and parquet writes)", "",
             "| index | search params | recall@10 | recall@100 | QPS batch 1 | QPS batch 256 | build s per shard | "
             "build s total | size MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        params = ", ".join(f"{k}={v}" for k, v in x["search_params"].items()) or "-"
        per = " / ".join(f"{s:.1f}" for s in x["build_s_per_shard"])
        lines.append(f"| `{x['factory']}` | {params} | {x['recall@10']:.3f} | {x['recall@100']:.3f} | "
                     f"{x['qps_b1']:,.0f} | {x['qps_b256']:,.0f} | {per} | {x['build_s_total']:.1f} | "
                     f"{x['index_mib']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
