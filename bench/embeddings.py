"""Dense vs sparse vs hashed ID embeddings under DDP: step time, all-reduce payload, peak memory.

Two processes on localhost (torch.distributed gloo, no Ray), one torch thread each, the default model
(ModelConfig defaults: 64-d ID embeddings, MLP [256], 64-d output, mean history pooling), no side
features, batch 1024 per process, history length 50; ``--ids`` users (uniform random in a batch) and
``--items`` items. Variants:

  dense    nn.Embedding, dense gradients, Adam: DDP all-reduces every row of both tables each step
  sparse   nn.Embedding(sparse=True), SparseAdam for the tables (the default)
  rowwise  sparse tables with row-wise Adagrad (one accumulator per row instead of two per weight)
  hashed   user ids double-hashed into ``--buckets`` rows, sparse, SparseAdam

Figures per variant: mean step time (forward + loss + backward with the all-reduce + optimizer step),
the all-reduce payload one process contributes per step (dense: 4 bytes per parameter; a sparse table:
its batch rows, coalesced, x (8-byte index + 4 x dim bytes), as gloo all-gathers indices and values),
and each process's peak RSS. A variant whose estimated memory does not fit in 85% of the available
memory is skipped with its estimate. Usage:

    python bench/embeddings.py --ids 1000000 10000000 [--items 100000] [--steps 10] [--buckets 1048576]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import tempfile
import time
from pathlib import Path

import psutil
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from twotower.model.config import ModelConfig
from twotower.model.loss import compute_loss
from twotower.model.optim import build_optimizer, sparse_parameters
from twotower.model.schema import DatasetSchema
from twotower.model.twotower import TwoTowerModel

HISTORY = 50
VARIANTS = ("dense", "sparse", "rowwise", "hashed")
STATE_COPIES = {"dense": 4, "sparse": 3, "rowwise": 1, "hashed": 3}   # weights + grad/optimizer copies per row


def _config(variant: str, buckets: int) -> tuple[ModelConfig, str]:
    cfg = ModelConfig(sparse_id_embeddings=variant != "dense",
                      user_id_buckets=buckets if variant == "hashed" else None)
    return cfg, "rowwise_adagrad" if variant == "rowwise" else "auto"


def _batch(users: int, items: int, batch: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"user_idx": torch.randint(1, users, (batch,), generator=g),
            "item_idx": torch.randint(1, items, (batch,), generator=g),
            "history": torch.randint(0, items, (batch, HISTORY), generator=g)}


def _payload_bytes(core: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Bytes this process feeds the all-reduce for one step on ``batch`` (see module docstring)."""
    sparse = {id(p) for p in sparse_parameters(core)}
    total = sum(4 * p.numel() for p in core.parameters() if id(p) not in sparse)
    core.zero_grad(set_to_none=True)
    compute_loss(core, batch).loss.backward()
    for p in core.parameters():
        if id(p) in sparse:
            grad = p.grad.coalesce()
            total += grad.indices().shape[1] * (8 + 4 * p.shape[1])
    core.zero_grad(set_to_none=True)
    return total


def _worker(rank: int, port: int, args: dict, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    schema = DatasetSchema(num_users=args["ids"], num_items=args["items"], history_length=HISTORY,
                           user_features=(), item_features=(), context_features=())
    cfg, sparse_name = _config(args["variant"], args["buckets"])
    torch.manual_seed(0)
    core = TwoTowerModel(schema, cfg)
    model = torch.nn.parallel.DistributedDataParallel(core, forward_sync_buffers=False)
    opt = build_optimizer("adam", model, lr=1e-3, sparse_name=sparse_name)
    g = torch.Generator().manual_seed(rank)
    times = []
    for step in range(args["warmup"] + args["steps"]):
        batch = _batch(args["ids"], args["items"], args["batch"], g)
        dist.barrier()
        t0 = time.perf_counter()
        loss = compute_loss(model, batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= args["warmup"]:
            times.append(time.perf_counter() - t0)
    payload = _payload_bytes(core, _batch(args["ids"], args["items"], args["batch"], g))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(out, f"rank{rank}.json").write_text(json.dumps({"step_s": sum(times) / len(times), "payload": payload,
                                                         "rss": rss}))
    dist.destroy_process_group()


def run_variant(variant: str, ids: int, items: int, buckets: int, batch: int, steps: int, warmup: int) -> dict:
    """Run one variant on 2 processes; returns its figures, or ``skipped`` with the memory estimate."""
    rows = (buckets if variant == "hashed" else ids) + items
    estimate = 2 * rows * 64 * 4 * STATE_COPIES[variant] + 2 * 600e6        # 2 processes, ~0.6 GB base each
    available = psutil.virtual_memory().available
    if estimate > 0.85 * available:
        return {"variant": variant, "ids": ids, "skipped": f"needs ~{estimate / 2**30:.1f} GiB for 2 processes, "
                                                           f"{available / 2**30:.1f} GiB available"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = dict(variant=variant, ids=ids, items=items, buckets=buckets, batch=batch, steps=steps, warmup=warmup)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(port, args, tmp), nprocs=2, join=True)
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(2)]
    return {"variant": variant, "ids": ids, "rows": rows, "step_ms": 1e3 * max(r["step_s"] for r in ranks),
            "payload_mb": max(r["payload"] for r in ranks) / 1e6, "rss_gib": max(r["rss"] for r in ranks) / 2**30}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ids", type=int, nargs="+", default=[1_000_000, 10_000_000], help="user ids (table rows)")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--buckets", type=int, default=1 << 20, help="rows of the hashed user table")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    a = p.parse_args()
    print(f"# 2 processes (gloo), batch {a.batch}/process, {a.items:,} items, history {HISTORY}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}")
    print("| variant | user ids | table rows | step ms | all-reduce MB/step/process | peak RSS GiB/process |")
    print("| --- | --- | --- | --- | --- | --- |")
    for ids in a.ids:
        for variant in a.variants:
            r = run_variant(variant, ids, a.items, a.buckets, a.batch, a.steps, a.warmup)
            if "skipped" in r:
                print(f"| {variant} | {ids:,} | - | skipped: {r['skipped']} | - | - |", flush=True)
            else:
                print(f"| {variant} | {ids:,} | {r['rows']:,} | {r['step_ms']:.0f} | {r['payload_mb']:.1f} | "
                      f"{r['rss_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
