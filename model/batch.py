"""Turning columnar interaction batches (NumPy, from parquet / Ray Data) into model input tensors."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Mapping

import numpy as np

from .schema import DatasetSchema, Feature

if TYPE_CHECKING:                       # torch is imported where tensors are made: the Ray Data tasks that cut
    import torch                        # examples (twotower.data.sequences) then never load it

WEIGHT = "weight"          # per-example sample weight (weighted datasets), float32 (B,)


def batch_columns(schema: DatasetSchema) -> list[str]:
    """Example columns the model reads: ids, history, every context feature and, for a weighted schema,
    ``weight``, in a fixed order."""
    return (["user_idx", "item_idx", "history"] + [f.name for f in schema.context_features]
            + ([WEIGHT] if schema.weighted else []))


def pad_lists(column, length: int) -> np.ndarray:
    """The one list-padding helper: a column of n integer lists -> int64 array (n, length).

    Shorter lists are right-padded with 0 (the padding / unknown index), longer ones keep their first
    ``length`` entries; a null row is all zeros. ``column`` may be a pyarrow ``list<int>`` Array or
    ChunkedArray (padded without a Python loop), a 2-D integer array, or a sequence (list, 1-D object
    array) of 1-D integer sequences or None.
    """
    if hasattr(column, "combine_chunks"):                  # pyarrow ChunkedArray
        column = column.combine_chunks()
    if hasattr(column, "offsets"):                         # pyarrow ListArray
        offsets = column.offsets.to_numpy().astype(np.int64)
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        return _scatter(values, np.diff(offsets), length)
    if isinstance(column, np.ndarray) and column.ndim == 2:
        out = np.zeros((column.shape[0], length), dtype=np.int64)
        n = min(length, column.shape[1])
        out[:, :n] = column[:, :n]
        return out
    rows = [np.asarray(r if r is not None else (), dtype=np.int64).ravel() for r in column]
    values = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    return _scatter(values, np.array([len(r) for r in rows], dtype=np.int64), length)


def _scatter(values: np.ndarray, lengths: np.ndarray, length: int) -> np.ndarray:
    """Rows of ``lengths[i]`` consecutive ``values`` -> (len(lengths), length) int64, 0-padded, truncated."""
    n = len(lengths)
    out = np.zeros((n, length), np.int64)
    if n == 0 or length == 0 or not len(values):
        return out
    row = np.repeat(np.arange(n), lengths)
    col = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = col < length
    out[row[keep], col[keep]] = values[keep]
    return out


def feature_column(f: Feature, column) -> np.ndarray:
    """One feature's column of B rows in the model's dtype and shape (context columns, user-feature
    overrides):

    * categorical: int64 (B,); numeric / bucketized: float32 (B,) raw values (NaN = missing);
    * multi_hot / hashed_bag: int64 (B, L), L = max(max_length, 1), :func:`pad_lists` (a 2-D int64 array
      of width L is returned as it is);
    * vector: float32 (B, dim) from a 2-D array or B rows of ``dim`` values (None = missing -> zeros).

    Raises:
        ValueError: a vector column whose rows do not have ``dim`` values (names the feature).
    """
    if f.kind == "categorical":
        return np.asarray(column).astype(np.int64, copy=False)
    if f.kind in ("numeric", "bucketized"):
        return np.asarray(column).astype(np.float32, copy=False)
    if f.kind in ("multi_hot", "hashed_bag"):
        width = max(f.max_length, 1)
        ok = isinstance(column, np.ndarray) and column.ndim == 2 and column.shape[1] == width
        return column.astype(np.int64, copy=False) if ok else pad_lists(column, width)
    if not (isinstance(column, np.ndarray) and column.ndim == 2):
        column = [np.zeros(f.dim, np.float32) if r is None else np.asarray(r, np.float32) for r in column]
        column = np.stack(column) if len(column) else np.zeros((0, f.dim), np.float32)
    if column.shape[1] != f.dim:
        raise ValueError(f"vector feature {f.name!r}: rows have {column.shape[1]} values, expected dim {f.dim}")
    return column.astype(np.float32, copy=False)


def to_numpy_batch(batch: Mapping[str, np.ndarray], schema: DatasetSchema) -> dict[str, np.ndarray]:
    """Cast a columnar batch to the model's dtypes: ids int64 (B,), history int64 (B, N), every context
    feature by :func:`feature_column` (categorical int64 (B,), numeric / bucketized float32 (B,), multi_hot
    int64 (B, L)), and ``weight`` float32 (B,) passed through when the batch has it.

    Raises:
        KeyError: a column the model needs is missing (names the column).
    """
    out: dict[str, np.ndarray] = {}
    for name in ("user_idx", "item_idx"):
        if name not in batch:
            raise KeyError(f"batch is missing column {name!r}")
        out[name] = np.asarray(batch[name]).astype(np.int64, copy=False)
    if "history" not in batch:
        raise KeyError("batch is missing column 'history'")
    history = batch["history"]
    out["history"] = history.astype(np.int64, copy=False) if (
        isinstance(history, np.ndarray) and history.ndim == 2 and history.shape[1] == schema.history_length
    ) else pad_lists(history, schema.history_length)
    for f in schema.context_features:
        if f.name not in batch:
            raise KeyError(f"batch is missing context column {f.name!r}")
        out[f.name] = feature_column(f, batch[f.name])
    if WEIGHT in batch:
        out[WEIGHT] = np.asarray(batch[WEIGHT]).astype(np.float32, copy=False)
    return out


def as_tensors(batch: Mapping[str, np.ndarray], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A batch already in model dtypes (:func:`to_numpy_batch`, e.g. from the Ray Data pipeline) as
    tensors on ``device``, without converting it again (zero-copy ``torch.from_numpy`` where possible)."""
    import torch
    out = {}
    for k, v in batch.items():
        v = np.ascontiguousarray(v)
        out[k] = (torch.from_numpy(v) if v.flags.writeable else torch.tensor(v)).to(device)
    return out


def to_tensors(batch: Mapping[str, np.ndarray], schema: DatasetSchema,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """:func:`to_numpy_batch` then :func:`as_tensors`: raw columns -> model input tensors on ``device``.
    Shapes: ids (B,), history (B, N), context (B,) or (B, L) (multi_hot), weight (B,)."""
    return as_tensors(to_numpy_batch(batch, schema), device)


def shuffled_batches(columns: Mapping[str, torch.Tensor], batch_size: int, generator: torch.Generator,
                     max_batches: int | None = None, device: torch.device | str | None = None
                     ) -> Iterator[dict[str, torch.Tensor]]:
    """One shuffled pass over in-memory example columns (each (R, ...), rows aligned): the rows in the
    order of one ``torch.randperm(R, generator=generator)`` (drawn at the first ``next()``), cut into
    ``R // batch_size`` full batches (the last partial batch dropped, as Ray Train's ``drop_last``), at
    most ``max_batches`` of them, each column moved to ``device`` when given. The plain training loop's
    batches and the replayed passes of ``twotower.distributed.example_cache`` both come from here."""
    import torch

    rows = len(next(iter(columns.values()))) if columns else 0
    order = torch.randperm(rows, generator=generator)
    stop = min(rows - batch_size + 1, (max_batches if max_batches is not None else rows) * batch_size)
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield {k: v[idx] if device is None else v[idx].to(device) for k, v in columns.items()}
