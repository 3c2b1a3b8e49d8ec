"""Ray Data ingest for training: streaming sequence readers, examples cut in the pipeline, per-worker
shards, batch iterators.

Pipeline per split (``read_split``); train and valid read the same files (``DATASET/sequences``,
format in :mod:`twotower.data.sequences`)::

    read_parquet(DATASET/sequences/part-*.parquet,      # local paths or URIs; V1 datasource, see below
                 columns=example_columns(schema [, with_seen]))
      .map_batches(cut_chunks, split code)               # pyarrow sequence rows -> the split's examples in
                                                         # model dtypes (ids int64 (B,), history (B, N)
                                                         # int64, context, weight, seen_items for valid);
                                                         # Ray Data tasks, not the training workers.
                                                         # examples: sequence -> train windows (W, L)
                                                         # (cut_windows: items, targets, positions,
                                                         # timestamps, mask, per-position context)
      [.repartition(target_num_rows_per_block=R)]        # eval splits only: small blocks (streaming)

Sharding (``TwoTowerDataConfig``): every dataset is ``streaming_split`` across the training workers.
``train`` uses ``equal=True`` (every worker sees exactly the same number of examples; with
``drop_last=True`` batches every worker then takes the same number of steps, which DDP needs: a
worker with one step more would wait forever in an all-reduce). Ray 2.60's default ``DataConfig``
also splits with ``equal=True``; we subclass it only so that evaluation splits use ``equal=False``
(no example is dropped, metrics stay exact; validation has no per-batch collectives, so unequal
shards are fine). Each worker streams its shard: no worker ever holds the whole dataset (with the
example cache, a worker holds its own share, up to ``train_cache_gib``).

History length: N = the model's (``twotower.model.sequence.history_length``: ``max_sequence_length``
for the transformer encoder, else ``schema.history_length``), plus ``history_timestamp`` when the
model embeds time gaps. Training on every position (``examples: sequence``) cuts the train split into
windows of ``max_sequence_length`` instead; valid stays per event (the second-last interaction).

Passes and epochs (``twotower.distributed.train_stream.TrainStream``): each pass over the train split
is one execution of the pipeline. Without ``max_steps_per_epoch`` an epoch is one pass; with it, an
epoch is at most that many steps and the next epoch continues the same pass (validation runs while
the pipeline keeps producing), so capped epochs see successive examples and the pipeline starts once
per pass, not once per epoch. When a worker's examples fit ``train_cache_gib``, its first pass also
fills an in-memory cache and later passes replay it shuffled, without this pipeline
(``twotower.distributed.example_cache``).

Shuffling (train only): the order of the parquet *files* is reshuffled at every pass
(``FileShuffleConfig(seed, reseed_after_execution=True)``) and examples are mixed in a per-worker
local shuffle buffer of ``shuffle_buffer_rows(batch_size)`` examples (``iter_torch_batches(
local_shuffle_buffer_size=..., local_shuffle_seed=seed + pass + rank)``). This is not a global
shuffle: one sequence row becomes all the train examples of one user (or of one window of a long
user), consecutive, so the buffer mixes about (buffer size / examples per user) users per batch
(ML-1M: ~60 users of ~165 examples each in 10k), which is what in-batch negatives need. A full
``random_shuffle()`` would materialise the dataset.

After a worker failure Ray Train rebuilds the dataset shards from the datasets given to the
trainer, so the per-execution file-order seed starts again at execution 0: in a run resumed after
epoch k, pass k + j reads the files in the order of pass j of an undisturbed run. The resumed run
starts a new pass (numbered k + 1) from the start of the data, also when epoch k ended inside a pass
(capped epochs). The local shuffle seed uses the pass number and is unaffected. (Block
assignment by ``streaming_split`` is dynamic, so examples per worker differ between runs anyway.)

Input checks (``twotower.data.splits.check_splits``, run by the driver): before anything starts,
every sequence file's footer is read, its columns are checked against the schema
(``sequence_required_columns``) and its ``twotower.events`` metadata gives the examples per split;
a bad file raises ``DataFormatError`` naming it, or is left out (of every split) when
``skip_bad_files`` is set.

Why the V1 parquet datasource: Ray 2.60 defaults to ``use_datasource_v2``, whose per-execution
footer-reader pool added ~10 s to every epoch start on a 2-core machine (V1: ~0.4 s). ``read_split``
switches it off only around its own ``read_parquet`` call.

Block sizes: ``cut_chunks`` cuts at most ``CUT_ENTRIES`` (131,072) sequence entries at a time, so one
output batch holds at most that many examples (~55 MiB with history_length=50); Ray Data packs them
into blocks below its 128 MiB ``target_max_block_size``. Evaluation splits (one example per user for
leave-last-out) are cut into blocks of ``EVAL_ROWS_PER_BLOCK`` examples so that
``streaming_split(equal=False)`` can balance a dataset stored as a single file across workers.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pyarrow as pa
import ray
import ray.data
import ray.train
import torch

from twotower.data.errors import DataFormatError
from twotower.data.parquet_check import find_unreadable_file
from twotower.data.sequences import SEEN_COLUMN, example_columns
from twotower.data.splits import cut_chunks, sequence_files, sequence_required_columns, split_code
from twotower.model.batch import as_tensors
from twotower.model.config import ModelConfig
from twotower.model.metrics import EVAL_BATCH_SIZE
from twotower.model.schema import DatasetSchema
from twotower.model.sequence import history_length, uses_history_time

EVAL_ROWS_PER_BLOCK = 256


def raise_for_unreadable_input(error: BaseException, files: dict[str, list[str]], schema: DatasetSchema) -> None:
    """Explain a failed fit: when an I/O or Arrow error is among ``error``, its causes and its
    ``worker_failures`` (Ray Train's ``WorkerGroupError``), raise DataFormatError naming the first
    file of ``files`` (per split; a file read by several splits is checked once) whose data pages do
    not decode, chained to ``error``; else return.

    Reads the sequence files (``find_unreadable_file``), so call it on the error path only.
    """
    pending, seen, io_error = [error], set(), False
    while pending and not io_error:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        io_error = isinstance(e, (OSError, pa.ArrowException)) or bool(
            re.search(r"parquet|pyarrow|thrift", str(e)[:100_000], re.IGNORECASE))
        pending += [e.__cause__, e.__context__, getattr(e, "cause", None),
                    *(getattr(e, "worker_failures", None) or {}).values()]
    if not io_error:
        return
    paths = list(dict.fromkeys(p for split_paths in files.values() for p in split_paths))
    bad = find_unreadable_file(paths, list(sequence_required_columns(schema)))
    if bad is not None:
        readers = "/".join(s for s, split_paths in files.items() if bad.path in split_paths)
        raise DataFormatError(bad.path, f"{bad.reason}; the {readers} split(s) cannot be read, training "
                                        f"failed with {type(error).__name__}") from error


def shuffle_buffer_rows(batch_size: int, windows: bool = False) -> int:
    """Examples held in each worker's local shuffle buffer: 8 batches, at least 10k (~5 MB at N=50);
    for sequence windows (~12 KB each at L=200) 8 batches only."""
    return 8 * batch_size if windows else max(8 * batch_size, 10_000)


def read_split(dataset_dir: str | Path, split: str, schema: DatasetSchema, *, with_seen: bool = False,
               shuffle_seed: int | None = None, rows_per_block: int | None = None,
               files: list[str] | None = None, history_length: int | None = None, history_time: bool = False,
               window_length: int | None = None) -> "ray.data.Dataset":
    """Lazy Ray Dataset of one split's examples, cut from the sequence files (see the module docstring).

    Columns: ``user_idx``/``item_idx``/``timestamp`` int64 (B,), ``history`` int64 (B, N), every context
    feature, ``weight`` float32 when ``schema.weighted``, and with ``with_seen`` ``seen_items`` (ragged
    int64 arrays: the user's items of the earlier splits, excluded at ranking).

    Args:
        split: ``train``, ``valid`` or ``test``. with_seen: also cut ``seen_items`` (valid/test).
        shuffle_seed: if not None, reshuffle the file order every execution (pass) from this seed.
        rows_per_block: if set, stream-repartition into blocks of at most this many examples.
        files: read only these sequence files (default: all; see ``check_splits``).
        history_length / history_time: N of ``history`` (default the schema's) and ``history_timestamp``.
        window_length: cut training windows of this length instead of examples (train only;
            ``twotower.data.sequences.cut_windows``).

    Raises:
        FileNotFoundError: the dataset has no sequence files. ValueError: an unknown split.
    """
    code = split_code(split)
    ctx = ray.data.DataContext.get_current()
    previous = ctx.use_datasource_v2
    ctx.use_datasource_v2 = False
    try:
        shuffle = None if shuffle_seed is None else ray.data.FileShuffleConfig(
            seed=shuffle_seed, reseed_after_execution=True)
        ds = ray.data.read_parquet(list(files or sequence_files(dataset_dir)), shuffle=shuffle,
                                   columns=example_columns(schema, with_seen))
    finally:
        ctx.use_datasource_v2 = previous
    ds = ds.map_batches(cut_chunks, batch_size=None, batch_format="pyarrow", zero_copy_batch=True,
                        fn_kwargs={"code": code, "schema": schema, "with_seen": with_seen, "history_length": history_length,
                                   "history_time": history_time, "window_length": window_length})
    if rows_per_block is not None:
        ds = ds.repartition(target_num_rows_per_block=rows_per_block)
    ds.context.enable_progress_bars = False
    ds.context.print_on_execution_start = False
    return ds


def build_datasets(dataset_dir: str | Path, schema: DatasetSchema, seed: int = 0,
                   files: Mapping[str, list[str]] | None = None, model: ModelConfig | None = None,
                   examples: str = "event") -> dict[str, "ray.data.Dataset"]:
    """``{"train": ..., "valid": ...}`` for ``TorchTrainer(datasets=...)``; train reshuffles files per epoch.

    ``files``: the sequence files to read per split (``check_splits``); default all of them. ``model``:
    gives the history the examples carry (default: the schema's); ``examples="sequence"``: train is cut
    into windows of ``model.max_sequence_length`` (see the module docstring).
    """
    files, model = files or {}, model or ModelConfig()
    hist = {"history_length": history_length(schema, model), "history_time": uses_history_time(model)}
    windows = {"window_length": model.max_sequence_length} if examples == "sequence" else hist
    return {
        "train": read_split(dataset_dir, "train", schema, shuffle_seed=seed, files=files.get("train"), **windows),
        "valid": read_split(dataset_dir, "valid", schema, with_seen=True, rows_per_block=EVAL_ROWS_PER_BLOCK,
                            files=files.get("valid"), **hist),
    }


class TwoTowerDataConfig(ray.train.DataConfig):
    """``streaming_split`` ``train`` with ``equal=True`` (equal steps on every worker) and every other
    dataset with ``equal=False`` (no rows dropped from evaluation)."""

    EQUAL_SPLITS = ("train",)

    def __init__(self, **kwargs):
        """As ``ray.train.DataConfig``. Without ``execution_options``, the current DataContext's resource
        limits, order and verbosity are copied here (what Ray's ``default_ingest_options`` does, minus
        the deprecated ``exclude_resources``, whose copy printed a RayDeprecationWarning every run)."""
        if kwargs.get("execution_options") is None:
            current = ray.data.DataContext.get_current().execution_options
            kwargs["execution_options"] = ray.data.ExecutionOptions(
                resource_limits=current.resource_limits, preserve_order=current.preserve_order,
                verbose_progress=current.verbose_progress)
        super().__init__(**kwargs)

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


def pass_seed(seed: int, pass_number: int, rank: int) -> int:
    """The shuffle seed of one worker's pass over the train split (the local shuffle buffer of a
    streamed pass, the permutation of a cached one): distinct per (seed, pass, rank)."""
    return seed * 1_000_003 + pass_number * 1_009 + rank


def iter_train_batches(shard, batch_size: int, *, seed: int, pass_number: int, rank: int,
                       device: torch.device | str = "cpu", windows: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """This worker's training batches for one pass over its shard (:class:`TrainStream` cuts passes into
    epochs): dicts of tensors on ``device``: ``user_idx``,
    ``item_idx``, ``timestamp`` int64 (B,), ``history`` int64 (B, N), every context feature, and ``weight``
    float32 (B,) for a weighted dataset; with ``windows`` (``examples: sequence``) B windows as
    ``twotower.data.sequences.cut_windows`` cuts them.

    ``drop_last=True``: only full batches, so with ``equal=True`` shards every worker takes the same
    number of steps. Examples are mixed in a local shuffle buffer seeded by (seed, pass_number, rank). On CUDA
    the host batches are pinned, so the copies to the GPU are asynchronous DMA transfers.

    Prefetch is Ray's default (``prefetch_batches=1``): after a pass's first batch the worker waits ~1 s
    per 50 s epoch of the default model on 2 cores (``data_wait_s``; docs/benchmarks.md), so deeper
    prefetch has little to win and would hold more blocks in the worker.
    """
    return shard.iter_torch_batches(
        batch_size=batch_size, drop_last=True, device=device, pin_memory=torch.device(device).type == "cuda",
        local_shuffle_buffer_size=shuffle_buffer_rows(batch_size, windows),
        local_shuffle_seed=pass_seed(seed, pass_number, rank))


def iter_eval_batches(shard, batch_size: int = EVAL_BATCH_SIZE, device: torch.device | str = "cpu"
                      ) -> Iterator[tuple[dict[str, torch.Tensor], list[np.ndarray]]]:
    """This worker's evaluation batches: (model input tensors, ``seen_items`` as B int64 arrays).

    The examples come cut in model dtypes by the pipeline (``cut_chunks``); they are only made tensors here."""
    for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
        seen = [np.asarray(s, dtype=np.int64) for s in batch.pop(SEEN_COLUMN)]
        yield as_tensors(batch, device), seen
