"""Mean pooling of the history: one ``F.embedding_bag`` against the gather, mask and sum (not a test).

    python bench/pooling.py --dataset /work/seq-data/ml-1m [--threads 1,2] [--steps 30] [--repeats 3]

Both ways give the same values and gradients (``tests/model/test_model.py``); this prints their time,
side by side in one process, alternating so that a noisy machine slows both alike:

* ``pooling``: forward + backward of the pooling alone, a batch of the dataset's train histories
  (``--batch-size`` rows, N = the schema's history length) over the sparse item ID table;
* ``step``: the whole training step of the default model (``TrainConfig()``: forward, loss, backward,
  sparse + dense Adam) on in-memory batches, with ``HistoryPooling.forward`` swapped for the old
  gather-mask-sum form (``gathered_mean`` below) or left as shipped.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import build_model, machine_line  # noqa: E402
from flops import batches  # noqa: E402
from twotower.distributed.config import TrainConfig  # noqa: E402
from twotower.model import features  # noqa: E402
from twotower.model.loss import compute_loss  # noqa: E402
from twotower.model.optim import build_optimizer  # noqa: E402

SHIPPED = features.HistoryPooling.forward


def gathered_mean(self, table, history):
    """The form before ``F.embedding_bag``: gather (B, N, E), zero the padding, sum, divide."""
    if self.mode != "mean":
        return SHIPPED(self, table, history)
    mask = (history > 0).unsqueeze(-1)
    return (table(history) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def seconds_per_call(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    cfg = TrainConfig(batch_size=args.batch_size)
    model, schema = build_model(args.dataset, cfg)
    model.train()
    optimizer = build_optimizer(cfg.optimizer, model, cfg.lr, cfg.weight_decay, cfg.sparse_optimizer)
    data = batches(args.dataset, cfg, schema, args.steps)
    tower = model.user_tower
    grad = torch.randn(args.batch_size, cfg.model.item_embedding_dim)
    generator = torch.Generator().manual_seed(0)

    def pooling():
        (tower.pooling(tower.item_id_embedding, data[0]["history"]) * grad).sum().backward()
        tower.item_id_embedding.weight.grad = None

    def step():
        for batch in data:
            out = compute_loss(model, batch, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()

    print(f"Machine: {machine_line()}. Default model, batch {args.batch_size}, N = {schema.history_length}.")
    print("| threads | what | gather, mask, sum (ms) | embedding_bag (ms) | ratio |\n|---|---|---|---|---|")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for name, fn, calls in (("pooling fwd + bwd", pooling, 50), ("training step", step, 1)):
            best = {}
            for _ in range(args.repeats):
                for label, forward in (("old", gathered_mean), ("new", SHIPPED)):
                    features.HistoryPooling.forward = forward
                    per = seconds_per_call(fn, calls) / (len(data) if fn is step else 1)
                    best[label] = min(best.get(label, float("inf")), per)
            features.HistoryPooling.forward = SHIPPED
            print(f"| {threads} | {name} | {best['old'] * 1e3:.2f} | {best['new'] * 1e3:.2f} | "
                  f"{best['new'] / best['old']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
