"""Ray Data ingest for training: streaming parquet readers, per-worker shards, batch iterators.

Pipeline per split (``read_split``)::

    read_parquet(DATASET/interactions/<split>/)          # V1 parquet datasource, see below
      .select_columns(batch_columns(schema) [+ seen_items])
      .map_batches(preprocess_batch)                      # numpy: history -> (B, N) int64, ids int64,
                                                          # numeric context float32 (Ray Data tasks,
                                                          # not the training workers)
      [.repartition(target_num_rows_per_block=R)]         # eval splits only: small blocks (streaming)

Sharding (``TwoTowerDataConfig``): every dataset is ``streaming_split`` across the training workers.
``train`` uses ``equal=True`` (every worker sees exactly the same number of rows; with
``drop_last=True`` batches every worker then takes the same number of steps, which DDP needs: a
worker with one step more would wait forever in an all-reduce). Ray 2.60's default ``DataConfig``
also splits with ``equal=True``; we subclass it only so that evaluation splits use ``equal=False``
(no row is dropped, metrics stay exact; validation has no per-batch collectives, so unequal shards
are fine). Each worker streams its shard: no worker ever holds the whole dataset.

Shuffling (train only): the order of the parquet *files* is reshuffled at every epoch
(``FileShuffleConfig(seed, reseed_after_execution=True)``) and rows are mixed in a per-worker
local shuffle buffer of ``shuffle_buffer_rows(batch_size)`` rows (``iter_torch_batches(
local_shuffle_buffer_size=..., local_shuffle_seed=seed + epoch + rank)``). This is not a global
shuffle; prepared files hold users in index order, so the buffer mixes many users per batch, which
is what in-batch negatives need. A full ``random_shuffle()`` would materialise the dataset.

Why the V1 parquet datasource: Ray 2.60 defaults to ``use_datasource_v2``, whose per-execution
footer-reader pool added ~10 s to every epoch start on a 2-core machine (V1: ~0.4 s). ``read_split``
switches it off only around its own ``read_parquet`` call.

Block sizes: train blocks are one parquet file each (~250k rows, ~110 MiB after preprocessing with
history_length=50; below Ray Data's 128 MiB ``target_max_block_size``). Evaluation splits are cut
into blocks of ``EVAL_ROWS_PER_BLOCK`` rows so that ``streaming_split(equal=False)`` can balance a
split stored as a single file across workers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pyarrow.parquet as pq
import ray
import ray.data
import ray.train
import torch

from twotower.model.batch import batch_columns, to_numpy_batch
from twotower.model.schema import DatasetSchema

SEEN_COLUMN = "seen_items"
EVAL_ROWS_PER_BLOCK = 256
EVAL_BATCH_SIZE = 512
EVAL_SCORES_PER_BATCH = 1 << 25     # 32M float32 scores = 128 MiB per (batch x catalogue) score matrix


def split_dir(dataset_dir: str | Path, split: str) -> Path:
    """``DATASET/interactions/<split>``; raises FileNotFoundError when it has no parquet file."""
    path = Path(dataset_dir) / "interactions" / split
    if not path.is_dir() or not any(path.glob("*.parquet")):
        raise FileNotFoundError(f"{path}: no parquet files (is {dataset_dir} a prepared dataset?)")
    return path


def split_num_rows(dataset_dir: str | Path, split: str) -> int:
    """Row count of a split from the parquet footers (no data read)."""
    files = sorted(split_dir(dataset_dir, split).glob("*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def shuffle_buffer_rows(batch_size: int) -> int:
    """Rows held in each worker's local shuffle buffer: 8 batches, at least 10k rows (~5 MB at N=50)."""
    return max(8 * batch_size, 10_000)


def preprocess_batch(batch: Mapping[str, np.ndarray], schema: DatasetSchema) -> dict[str, np.ndarray]:
    """Numpy batch from parquet -> model dtypes (``to_numpy_batch``); ``seen_items`` passes through.

    Output: ``user_idx``/``item_idx`` (B,) int64, ``history`` (B, N) int64, context columns (B,)
    float32/int64, and for eval splits ``seen_items``: (B,) object array of int arrays (ragged).
    """
    out = to_numpy_batch(batch, schema)
    if SEEN_COLUMN in batch:
        out[SEEN_COLUMN] = batch[SEEN_COLUMN]
    return out


def read_split(dataset_dir: str | Path, split: str, schema: DatasetSchema, *, with_seen: bool = False,
               shuffle_seed: int | None = None, rows_per_block: int | None = None) -> "ray.data.Dataset":
    """Lazy Ray Dataset over one split, preprocessed to model dtypes (see the module docstring).

    Args:
        with_seen: also read ``seen_items`` (valid/test only; needed to exclude seen items in ranking).
        shuffle_seed: if not None, reshuffle the file order every execution (epoch) from this seed.
        rows_per_block: if set, stream-repartition into blocks of at most this many rows.

    Raises:
        FileNotFoundError: the split has no parquet files.
    """
    path = split_dir(dataset_dir, split)
    columns = batch_columns(schema) + ([SEEN_COLUMN] if with_seen else [])
    ctx = ray.data.DataContext.get_current()
    previous = ctx.use_datasource_v2
    ctx.use_datasource_v2 = False
    try:
        shuffle = None if shuffle_seed is None else ray.data.FileShuffleConfig(
            seed=shuffle_seed, reseed_after_execution=True)
        ds = ray.data.read_parquet(str(path), shuffle=shuffle)
    finally:
        ctx.use_datasource_v2 = previous
    ds = ds.select_columns(columns).map_batches(preprocess_batch, fn_kwargs={"schema": schema},
                                                batch_format="numpy")
    if rows_per_block is not None:
        ds = ds.repartition(target_num_rows_per_block=rows_per_block)
    ds.context.enable_progress_bars = False
    ds.context.print_on_execution_start = False
    return ds


def build_datasets(dataset_dir: str | Path, schema: DatasetSchema, seed: int = 0) -> dict[str, "ray.data.Dataset"]:
    """``{"train": ..., "valid": ...}`` for ``TorchTrainer(datasets=...)``; train reshuffles files per epoch."""
    return {
        "train": read_split(dataset_dir, "train", schema, shuffle_seed=seed),
        "valid": read_split(dataset_dir, "valid", schema, with_seen=True, rows_per_block=EVAL_ROWS_PER_BLOCK),
    }


class TwoTowerDataConfig(ray.train.DataConfig):
    """``streaming_split`` ``train`` with ``equal=True`` (equal steps on every worker) and every other
    dataset with ``equal=False`` (no rows dropped from evaluation)."""

    EQUAL_SPLITS = ("train",)

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = [{} for _ in range(world_size)]
        hints = worker_node_ids if self._enable_shard_locality else None
        for name, ds in datasets.items():
            if ds.name is None:
                ds.set_name(name)
            ds = ds.copy(ds)
            ds.context.execution_options = self._resolve_execution_options(name)
            splits = ds.streaming_split(world_size, equal=name in self.EQUAL_SPLITS, locality_hints=hints)
            for i, split in enumerate(splits):
                output[i][name] = split
        return output


def iter_train_batches(shard, batch_size: int, *, seed: int, epoch: int, rank: int,
                       device: torch.device | str = "cpu") -> Iterator[dict[str, torch.Tensor]]:
    """This worker's training batches for one epoch: dicts of (B,) / (B, N) tensors on ``device``.

    ``drop_last=True``: only full batches, so with ``equal=True`` shards every worker takes the same
    number of steps. Rows are mixed in a local shuffle buffer seeded by (seed, epoch, rank).
    """
    return shard.iter_torch_batches(
        batch_size=batch_size, drop_last=True, device=device,
        local_shuffle_buffer_size=shuffle_buffer_rows(batch_size),
        local_shuffle_seed=seed * 1_000_003 + epoch * 1_009 + rank)


def eval_batch_size(num_items: int) -> int:
    """Rows per full-ranking evaluation batch: ``EVAL_BATCH_SIZE``, lowered so that the (rows, num_items)
    float32 score matrix stays within ``EVAL_SCORES_PER_BATCH`` (128 MiB): 512 rows up to 65k items,
    32 rows at 1M items, at least 8."""
    return int(max(8, min(EVAL_BATCH_SIZE, EVAL_SCORES_PER_BATCH // max(num_items, 1))))


def iter_eval_batches(shard, schema: DatasetSchema, batch_size: int = EVAL_BATCH_SIZE,
                      device: torch.device | str = "cpu"
                      ) -> Iterator[tuple[dict[str, torch.Tensor], list[np.ndarray]]]:
    """This worker's evaluation batches: (model input tensors, ``seen_items`` as B int64 arrays)."""
    for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
        seen = [np.asarray(s, dtype=np.int64) for s in batch.pop(SEEN_COLUMN)]
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device)
                   for k, v in to_numpy_batch(batch, schema).items()}
        yield tensors, seen
