"""Stage 1 of the index job: embed an item catalogue with Ray Data and an actor pool.

Pipeline::

    read_parquet(item files, columns=[item_idx, item_id])      # any number of files / directories
      .map_batches(ItemEmbedder, compute=ActorPoolStrategy(size=A), batch_size=B, batch_format="pyarrow")
          # each actor loads the checkpoint's item tower once; drops item_idx 0 (the unknown item);
          # emits item_idx int64, item_id string, embedding fixed_size_list<float32>[D], shard int32
      .write_parquet(OUT/embeddings, partition_cols=["shard"])   # OUT/embeddings/shard=K/*.parquet

Ray Data streams blocks through the pool with backpressure, so no process ever holds the catalogue.
Embeddings are the item tower's output as is: L2-normalised exactly when the model's
``cfg.l2_normalize`` is (the tower normalises).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import torch

from twotower.data.errors import DataFormatError
from twotower.data.parquet_check import check_parquet_file
from twotower import storage
from twotower.index.build import shard_of
from twotower.model.checkpoint import CheckpointInfo, load_checkpoint

EMBEDDING_COLUMNS = ("item_idx", "item_id", "embedding")
ITEM_COLUMNS = {"item_idx": "integer", "item_id": "any"}


class ItemEmbedder:
    """Ray Data actor UDF: pyarrow batch (item_idx, item_id) -> (item_idx, item_id, embedding, shard).

    Args:
        checkpoint: the checkpoint's info, read once by the driver (the weights are read from its
            ``path``, local or URI; a URI is copied to a local temp dir once per actor).
        num_shards: S, for the ``shard`` column (:func:`twotower.index.build.shard_of` of item_id).
        device: ``cpu`` or ``cuda``. torch_threads: intra-op threads of this actor.
    Raises (from ``__call__``):
        ValueError: an item_idx outside the checkpoint's item vocabulary [0, num_items).
    """

    def __init__(self, checkpoint: CheckpointInfo, num_shards: int, device: str = "cpu", torch_threads: int = 1):
        torch.set_num_threads(max(1, torch_threads))
        loaded = load_checkpoint(checkpoint.path, map_location=device, info=checkpoint)
        self.tower = loaded.model.item_tower.eval()      # the user tower is dropped with ``loaded``
        self.num_items = checkpoint.schema.num_items
        self.dim = checkpoint.model_config.final_embedding_dim
        self.num_shards, self.device = num_shards, device

    def __call__(self, batch: pa.Table) -> pa.Table:
        idx = batch.column("item_idx").to_numpy().astype(np.int64)
        keep = idx != 0
        if not keep.all():
            batch, idx = batch.filter(pa.array(keep)), idx[keep]
        if len(idx) and (idx.min() < 0 or idx.max() >= self.num_items):
            bad = idx[(idx < 0) | (idx >= self.num_items)][0]
            raise ValueError(f"item_idx {bad} is outside the checkpoint's item vocabulary [0, {self.num_items})")
        with torch.no_grad():
            emb = self.tower(torch.from_numpy(idx).to(self.device)).float().cpu().numpy()
        ids = batch.column("item_id").cast(pa.string()).combine_chunks()
        flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1), pa.float32())
        return pa.table({"item_idx": pa.array(idx, pa.int64()), "item_id": ids,
                         "embedding": pa.FixedSizeListArray.from_arrays(flat, self.dim),
                         "shard": pa.array(shard_of(ids.to_pylist(), self.num_shards), pa.int32())})


def item_paths(dataset: str | None, items: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Item parquet inputs: ``dataset/items.parquet`` (when ``dataset`` is given) followed by ``items``.

    Raises:
        ValueError: neither given.
    """
    paths = ([storage.join(dataset, "items.parquet")] if dataset else []) + [str(p) for p in items]
    if not paths:
        raise ValueError("no item catalogue: give a dataset directory and/or item parquet files")
    return [p if storage.is_uri(p) else storage.resolve(p)[1] for p in paths]


def check_item_files(paths: list[str]) -> int:
    """Footer + column check (``item_idx`` integer, ``item_id`` present) of every item parquet input, no
    data read; ``paths`` are files or directories (every ``*.parquet`` below), local or URIs.

    Returns the number of rows (from the footers).

    Raises:
        FileNotFoundError: a path that does not exist. DataFormatError: a file that is not parquet, is
            truncated or lacks a column (names the file).
    """
    rows = 0
    for path in paths:
        fs, inner = storage.resolve(path)
        kind = fs.get_file_info(inner).type
        if kind == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{path}: no such item parquet file or directory")
        files = ([storage.join(path, f) for f in storage.list_files(path) if f.endswith(".parquet")]
                 if kind == pafs.FileType.Directory else [path])
        if not files:
            raise FileNotFoundError(f"{path}: directory has no parquet files")
        for f in files:
            n, reason = check_parquet_file(f, ITEM_COLUMNS)
            if reason is not None:
                raise DataFormatError(f, f"item catalogue: {reason}")
            rows += n
    return rows


def embed_items(checkpoint: CheckpointInfo, paths: list[str], out: str, *, num_shards: int, batch_size: int = 4096,
                num_actors: int = 2, use_gpu: bool = False, cpus_per_actor: float = 1.0) -> dict:
    """Run stage 1 (see the module docstring) into ``out`` (local dir or URI). Ray must be initialised;
    ``checkpoint`` (read by the caller) goes to every actor, so none reads ``checkpoint.json`` again.

    Returns:
        {"rows": items embedded, "seconds": wall time, "items_per_second": rows / seconds}.
    Raises:
        ValueError / CheckpointError / ray.exceptions.RayTaskError: bad item_idx, unreadable checkpoint.
    """
    t0 = time.perf_counter()
    ctx = ray.data.DataContext.get_current()
    previous = ctx.use_datasource_v2
    ctx.use_datasource_v2 = False          # V1 parquet reader: much faster start on small machines
    try:
        ds = ray.data.read_parquet(paths, columns=["item_idx", "item_id"])
    finally:
        ctx.use_datasource_v2 = previous
    ds = ds.map_batches(ItemEmbedder, batch_size=batch_size, batch_format="pyarrow",
                        compute=ray.data.ActorPoolStrategy(size=num_actors),
                        fn_constructor_kwargs={"checkpoint": checkpoint, "num_shards": num_shards,
                                               "device": "cuda" if use_gpu else "cpu",
                                               "torch_threads": max(1, int(cpus_per_actor))},
                        num_cpus=cpus_per_actor, num_gpus=1 if use_gpu else 0)
    ds.context.enable_progress_bars = sys.stderr.isatty() and not os.environ.get("CI")   # Ray Data's tqdm bars
    ds.context.print_on_execution_start = False
    ds.write_parquet(out, partition_cols=["shard"])
    seconds = time.perf_counter() - t0
    rows = sum(shard_rows(out, s) for s in range(num_shards))
    return {"rows": rows, "seconds": round(seconds, 3), "items_per_second": round(rows / max(seconds, 1e-9), 1)}


def shard_files(embeddings: str, shard: int) -> list[str]:
    """Sorted parquet files of shard ``shard`` under an embeddings directory (empty when it has none)."""
    base = storage.join(embeddings, f"shard={shard}")
    return [storage.join(base, f) for f in storage.list_files(base) if f.endswith(".parquet")]


def shard_rows(embeddings: str, shard: int, stored_shards: int | None = None, num_shards: int | None = None) -> int:
    """Rows of shard ``shard``: from the parquet footers when the embeddings are partitioned into the wanted
    number of shards (``stored_shards == num_shards`` or either None), else by hashing every item_id."""
    if stored_shards is None or num_shards is None or stored_shards == num_shards:
        total = 0
        for path in shard_files(embeddings, shard):
            fs, p = storage.resolve(path)
            with fs.open_input_file(p) as f:
                total += pq.ParquetFile(f).metadata.num_rows
        return total
    return sum(len(idx) for idx, _, _ in iter_shard(embeddings, shard, 0, stored_shards, num_shards, ids_only=True))


def iter_shard(embeddings: str, shard: int, dim: int, stored_shards: int | None = None,
               num_shards: int | None = None, rows_per_batch: int = 65_536, ids_only: bool = False):
    """Yield (item_idx int64 (b,), embeddings float32 (b, dim), item_id list[str]) of one shard, file by file.

    Embeddings written for ``stored_shards`` partitions and read for another ``num_shards`` (re-sharding
    without re-embedding): every partition is read and rows are kept where ``shard_of(item_id, num_shards)
    == shard``. ``ids_only``: skip the embedding column (yields None for it).
    """
    reshard = stored_shards is not None and num_shards is not None and stored_shards != num_shards
    parts = range(stored_shards) if reshard else [shard]
    columns = ["item_idx", "item_id"] + ([] if ids_only else ["embedding"])
    for part in parts:
        for path in shard_files(embeddings, part):
            fs, p = storage.resolve(path)
            with fs.open_input_file(p) as f:
                for b in pq.ParquetFile(f).iter_batches(batch_size=rows_per_batch, columns=columns):
                    ids = b.column("item_id").to_pylist()
                    if reshard:
                        keep = shard_of(ids, num_shards) == shard
                        b, ids = b.filter(pa.array(keep)), [i for i, k in zip(ids, keep) if k]
                    emb = None if ids_only else b.column("embedding").flatten().to_numpy(
                        zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
                    yield b.column("item_idx").to_numpy().astype(np.int64), emb, ids
