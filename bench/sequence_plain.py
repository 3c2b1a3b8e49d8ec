"""Train a config in a plain single-process loop and print valid metrics after every epoch (not a test).

    python bench/sequence_plain.py DATASET jobs/configs/ml-1m-sequence.yaml [key=value ...]

For quick comparisons of sequence-model settings without Ray's start-up: the same model, loss and
batches as a Ray Train worker (``_common.plain_train``; sequence windows cut in-process by
``cut_chunks(window_length=...)``, per-event rows by ``load_split_tensors``), valid Recall@10 /
NDCG@10 / Recall@50 / sampled HR@10 over the full catalogue after every epoch, early stopping on
valid Recall@10 (``patience``), then the test metrics of the last model. Prints positions (or
examples) per training second (rows trained x the mean positions per row, so also right for the
capped epochs of ``max_steps_per_epoch``).
"""
from __future__ import annotations

import glob
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from _common import build_model, load_split_tensors, plain_train  # noqa: E402
from twotower.data.splits import cut_chunks  # noqa: E402
from twotower.distributed.config import TrainConfig  # noqa: E402
from twotower.evaluation.offline import iter_split_batches  # noqa: E402
from twotower.model.batch import as_tensors  # noqa: E402
from twotower.model.metrics import RankingAccumulator  # noqa: E402


def windows(dataset: str, schema, length: int) -> dict[str, torch.Tensor]:
    """Every train window of the dataset (``cut_windows`` layout) as tensors in memory."""
    parts = []
    for path in sorted(glob.glob(f"{dataset}/sequences/*.parquet")):
        parts += list(cut_chunks(pq.read_table(path), 0, schema, window_length=length))
    return {k: torch.from_numpy(np.concatenate([p[k] for p in parts])) for k in parts[0]}


@torch.no_grad()
def evaluate(model, dataset: str, schema, split: str) -> dict[str, float]:
    """Full-ranking metrics of ``split`` (the user's earlier items excluded), as ``twotower evaluate``."""
    model.eval()
    acc = RankingAccumulator([10, 50], schema.num_items)
    embs = model.all_item_embeddings()
    for cols, seen in iter_split_batches(dataset, split, schema, 1024, history_length=model.history_length,
                                         history_time=model.uses_history_time):
        b = as_tensors(cols)
        acc.add(model.rank_scores(b, embs), b["item_idx"], seen, user_idx=b["user_idx"])
    model.train()
    return RankingAccumulator.finalize(acc.sums())


def main(argv: list[str]) -> int:
    dataset, cfg = argv[0], TrainConfig.from_yaml(argv[1], argv[2:])
    model, schema = build_model(dataset, cfg)
    sequence = cfg.examples == "sequence"
    data = windows(dataset, schema, cfg.model.max_sequence_length) if sequence else \
        load_split_tensors(dataset, "train", schema)
    per_epoch = int(data["mask"].sum()) if sequence else len(data["user_idx"])
    print(f"{len(data['user_idx'])} {'windows' if sequence else 'examples'}, {per_epoch} positions per epoch", flush=True)
    t0, best = time.time(), [0.0, 0]

    def on_epoch(epoch, run) -> bool:
        m = evaluate(model, dataset, schema, "valid")
        if m["recall@10"] > best[0]:
            best[:] = [m["recall@10"], epoch]
        rate = run.examples * per_epoch / len(data["user_idx"]) / run.seconds       # rows trained x positions per row
        print(f"epoch {epoch}: wall {time.time() - t0:.0f} s, {rate:,.0f} positions/s, "
              f"valid Recall@10 {m['recall@10']:.4f} NDCG@10 {m['ndcg@10']:.4f} Recall@50 {m['recall@50']:.4f} "
              f"sampled HR@10 {m['sampled_hr@10']:.4f}", flush=True)
        return epoch - best[1] >= cfg.patience

    cap = cfg.max_steps_per_epoch and cfg.max_steps_per_epoch * cfg.epochs      # smoke runs
    plain_train(model, cfg, data, epochs=cfg.epochs, on_epoch=on_epoch, seed=cfg.seed, max_steps=cap)
    test = evaluate(model, dataset, schema, "test")
    print("test", json.dumps({k: round(v, 4) for k, v in test.items() if "@" in k}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
