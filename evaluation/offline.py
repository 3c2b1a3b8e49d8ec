"""Offline evaluation of a checkpoint on a split, in-process (no Ray): model vs popularity baseline,
exactly and, with an index, through ANN search."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from twotower.data.sequences import SEEN_COLUMN
from twotower.data.splits import iter_split_examples
from twotower.data.tables import load_feature_tables
from twotower.index.recall import ann_rank_scores, index_recall
from twotower.index.sharded import ShardedIndex
from twotower.model.batch import as_tensors
from twotower.model.checkpoint import check_dataset, load_checkpoint, read_checkpoint
from twotower.model.config import ContextMode
from twotower.model.metrics import RankingAccumulator, eval_batch_size, popularity_scores
from twotower.model.schema import DatasetSchema


def iter_split_batches(dataset_dir: str | Path, split: str, schema: DatasetSchema, batch_size: int = 1024, *,
                       history_length: int | None = None, history_time: bool = False
                       ) -> Iterator[tuple[dict[str, np.ndarray], list[np.ndarray]]]:
    """Stream the examples of a valid/test split (local or URI; pyarrow ``iter_batches`` over the sequence
    files, only the columns ``cut_examples`` reads): (model columns, seen item arrays) per batch.

    Examples come in file and row order, in batches of ``batch_size`` (the last one shorter), cut by
    :func:`~twotower.data.sequences.cut_examples`: ids and ``timestamp`` int64 (B,), ``history`` (B, N)
    int64 (N = ``history_length``, default the schema's; ``history_timestamp`` with ``history_time``), context float32/int64, ``weight`` for a weighted dataset; the seen arrays are int64, the
    user's items of the earlier splits (excluded at ranking).

    Raises:
        ValueError: ``split`` is not ``valid`` or ``test``. FileNotFoundError: no sequence file.
        DataFormatError: a sequence file lacks a column (named).
    """
    if split not in ("valid", "test"):
        raise ValueError(f"evaluation ranks a valid or test split, got {split!r}")
    for batch in iter_split_examples(dataset_dir, split, schema, batch_size, with_seen=True,
                                     history_length=history_length, history_time=history_time):
        seen = [np.asarray(s, np.int64) for s in batch.pop(SEEN_COLUMN)]
        yield batch, seen


@torch.no_grad()
def evaluate(checkpoint_dir: str | Path, dataset_dir: str | Path, split: str = "test",
             ks: Sequence[int] = (10, 20, 50), batch_size: int | None = None, device: str | torch.device = "cpu",
             index_dir: str | Path | None = None) -> dict:
    """Full-ranking metrics of a checkpoint and of the popularity baseline on ``split``.

    ``batch_size`` queries are scored at a time (None: ``eval_batch_size(num_items)``, which keeps the
    (batch, catalogue) score matrix within 128 MiB). Every query ranks the whole catalogue minus item 0 and the user's earlier items (``seen_items``);
    popularity scores items by their train interaction count. Both use the same accumulator. With
    ``index_dir`` (a ``twotower index`` output built from this checkpoint) the model's queries are also
    ranked through the sharded index (top ``max(ks)`` per query, seen items excluded in the search), and
    the index's recall@max(ks) against the exact (brute-force) top-k is reported.

    Returns:
        ``{"model": {...}, "popularity": {...}, "split", "num_queries", "checkpoint", "dataset_dir", "ks"}``
        where each metrics dict has ``recall@k``, ``hr@k``, ``ndcg@k`` per k, ``sampled_hr@10``,
        ``sampled_ndcg@10`` and ``count``; with an index also ``"index": {...}`` (same metrics, ranked
        through the index), ``"index_recall@K"`` and ``"index_dir"``.

    Raises:
        CheckpointError: unreadable checkpoint. SchemaError / FileNotFoundError: not a prepared dataset.
        IncompatibleDatasetError (a ValueError): the checkpoint was trained on other vocabularies or
            features than ``dataset_dir`` has (:func:`~twotower.model.checkpoint.check_dataset`). ValueError:
            ranking through an index is asked for a ``scoring_layer`` model (its score is not a dot
            product; serving re-ranks index candidates with the head instead).
        IndexFormatError: the index is unreadable or was built from another checkpoint.
    """
    info, schema = read_checkpoint(checkpoint_dir), DatasetSchema.load(dataset_dir)
    check_dataset(info.schema, schema, checkpoint=checkpoint_dir, dataset_dir=dataset_dir)
    loaded = load_checkpoint(checkpoint_dir, map_location=device, info=info)
    model = loaded.model
    _, item_table = load_feature_tables(dataset_dir, schema)
    popularity = popularity_scores(item_table["train_count"]).to(device)
    accs = {name: RankingAccumulator(ks, schema.num_items)
            for name in ("model", "popularity")}
    index, depth, recall_sum = None, max(ks), 0.0
    if index_dir is not None:
        index = _open_index(index_dir, loaded)
        accs["index"] = RankingAccumulator(ks, schema.num_items)
    item_embs = model.all_item_embeddings()
    batch_size = batch_size or eval_batch_size(schema.num_items)
    for numpy_batch, seen in iter_split_batches(dataset_dir, split, schema, batch_size,
                                                history_length=model.history_length,
                                                history_time=model.uses_history_time):
        batch = as_tensors(numpy_batch, device)
        target, users = batch["item_idx"], batch["user_idx"]
        exact = model.rank_scores(batch, item_embs)
        accs["model"].add(exact, target, seen, user_idx=users)
        accs["popularity"].add(popularity.expand(len(target), -1), target, seen, user_idx=users)
        if index is not None:
            queries = model.query_embedding(batch).cpu().numpy()
            ann = ann_rank_scores(index, queries, schema.num_items, depth, exclude=seen, base_scores=exact.cpu())
            accs["index"].add(torch.from_numpy(ann), target, seen, user_idx=users)
            recall_sum += index_recall(index, item_embs.cpu(), queries, depth, exclude=seen) * len(target)
    out = {name: RankingAccumulator.finalize(acc.sums()) for name, acc in accs.items()}
    result = {**out, "split": split, "num_queries": int(out["model"]["count"]),
              "checkpoint": str(checkpoint_dir), "dataset_dir": str(dataset_dir), "ks": sorted(set(ks))}
    if index is not None:
        result |= {f"index_recall@{depth}": recall_sum / max(out["model"]["count"], 1.0), "index_dir": str(index_dir)}
    return result


def _open_index(index_dir: str | Path, loaded) -> ShardedIndex:
    """Load the index and check it belongs to ``loaded`` (same model.pt sha256) and a dot-product mode."""
    if loaded.model_config.context_mode == ContextMode.SCORING_LAYER:
        raise ValueError("ranking through an index needs a dot-product model (user_tower or trilinear); "
                         "scoring_layer re-ranks index candidates with its head at serving time")
    index = ShardedIndex.load(index_dir)
    index.verify_checkpoint(loaded.model_sha256)
    return index
