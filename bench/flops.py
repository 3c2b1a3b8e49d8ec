"""The training step's arithmetic against the machine's: FLOPs per example, achieved FLOP/s (not a test).

    python bench/flops.py --dataset DATASET [--configs default,jobs/configs/ml-1m-sequence.yaml]
                          [--steps 5] [--write-docs docs/benchmarks.md]

For each configuration (``default`` = ``TrainConfig()``, or a YAML file) on the same prepared dataset:

* FLOPs of one training step (forward + backward of ``compute_loss``), counted by PyTorch's
  ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, attention and convolutions; embedding
  lookups, element-wise ops and the optimizer count 0, so this is a lower bound of the arithmetic),
  per step and per example (per position for ``examples: sequence``);
* the step's wall time (mean of ``--steps`` steps after one warm-up: forward, backward and optimizer
  step on in-memory batches, ``torch.get_num_threads()`` threads) and its achieved FLOP/s;
* beside them the machine's measured float32 matmul FLOP/s (``torch.mm`` of 2048 x 2048 matrices, the
  best of 5, same threads): the ratio is the step's share of the hardware's dense peak.
"""
from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from _common import build_model, load_split_tensors, machine_line, write_docs_section  # noqa: E402
from twotower.data.splits import cut_chunks  # noqa: E402
from twotower.distributed.config import TrainConfig  # noqa: E402
from twotower.model.batch import shuffled_batches  # noqa: E402
from twotower.model.loss import compute_loss  # noqa: E402
from twotower.model.optim import build_optimizer  # noqa: E402


def matmul_flops_per_s(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 FLOP/s of ``torch.mm`` (n x n) @ (n x n) = 2 n^3 FLOPs."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def batches(dataset: str, cfg: TrainConfig, schema, count: int) -> list[dict[str, torch.Tensor]]:
    """``count`` training batches of ``cfg.batch_size`` (windows or per-event rows) from the train split."""
    if cfg.examples == "sequence":
        table = pq.read_table(sorted(glob.glob(f"{dataset}/sequences/*.parquet")))
        parts = list(cut_chunks(table, 0, schema, window_length=cfg.model.max_sequence_length))
        data = {k: torch.from_numpy(np.concatenate([p[k] for p in parts])) for k in parts[0]}
    else:
        data = load_split_tensors(dataset, "train", schema)
    return list(shuffled_batches(data, cfg.batch_size, torch.Generator().manual_seed(0), max_batches=count))


def measure(dataset: str, name: str, cfg: TrainConfig, steps: int) -> dict:
    """FLOPs and wall time of ``steps`` training steps of ``cfg`` (see the module docstring)."""
    model, schema = build_model(dataset, cfg)
    model.train()
    optimizer = build_optimizer(cfg.optimizer, model, cfg.lr, cfg.weight_decay, cfg.sparse_optimizer)
    generator = torch.Generator().manual_seed(0)
    data = batches(dataset, cfg, schema, steps + 1)

    def step(batch):
        out = compute_loss(model, batch, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step(data[0])
    flops = counter.get_total_flops()
    t0 = time.perf_counter()
    for batch in data[1:]:
        step(batch)
    seconds = (time.perf_counter() - t0) / steps
    examples = float(np.mean([int(b["mask"].sum()) if "mask" in b else len(b["user_idx"]) for b in data]))
    return {"name": name, "unit": "position" if cfg.examples == "sequence" else "example", "flops_step": flops,
            "flops_example": flops / examples, "seconds": seconds, "examples_per_s": examples / seconds,
            "flops_per_s": flops / seconds}


def render(rows: list[dict], peak: float, command: str) -> str:
    lines = [f"### Training step FLOPs vs the machine ({machine_line()}, {torch.get_num_threads()} threads)", "",
             f"    {command}", "",
             f"Measured float32 matmul peak (torch.mm 2048 x 2048): **{peak / 1e9:,.1f} GFLOP/s**.", "",
             "| configuration | FLOPs per step | FLOPs per example | step (s) | examples/s | achieved GFLOP/s "
             "| share of matmul peak |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['flops_step'] / 1e9:,.2f} G | {r['flops_example'] / 1e6:,.2f} M per "
                     f"{r['unit']} | {r['seconds']:.3f} | {r['examples_per_s']:,.0f} | {r['flops_per_s'] / 1e9:,.1f} "
                     f"| {r['flops_per_s'] / peak:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--configs", default="default,jobs/configs/ml-1m-sequence.yaml")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--write-docs")
    args = p.parse_args(argv)
    rows = []
    for name in args.configs.split(","):
        cfg = TrainConfig() if name == "default" else TrainConfig.from_yaml(name)
        rows.append(measure(args.dataset, name, cfg, args.steps))
    peak = matmul_flops_per_s()
    text = render(rows, peak, "python bench/flops.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(text)
    if args.write_docs:
        write_docs_section(args.write_docs, "flops", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
