"""Turning columnar interaction batches (NumPy, from parquet / Ray Data) into model input tensors."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from .schema import DatasetSchema


def batch_columns(schema: DatasetSchema) -> list[str]:
    """Interaction columns the model reads: ids, history and every context feature, in a fixed order."""
    return ["user_idx", "item_idx", "history"] + [f.name for f in schema.context_features]


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


def to_numpy_batch(batch: Mapping[str, np.ndarray], schema: DatasetSchema) -> dict[str, np.ndarray]:
    """Cast a columnar batch to the model's dtypes: ids/categoricals int64, numerics float32, history (B, N).

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
        dtype = np.float32 if f.kind == "numeric" else np.int64
        out[f.name] = np.asarray(batch[f.name]).astype(dtype, copy=False)
    return out


def as_tensors(batch: Mapping[str, np.ndarray], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A batch already in model dtypes (:func:`to_numpy_batch`, e.g. from the Ray Data pipeline) as
    tensors on ``device``, without converting it again (zero-copy ``torch.from_numpy`` where possible)."""
    out = {}
    for k, v in batch.items():
        v = np.ascontiguousarray(v)
        out[k] = (torch.from_numpy(v) if v.flags.writeable else torch.tensor(v)).to(device)
    return out


def to_tensors(batch: Mapping[str, np.ndarray], schema: DatasetSchema,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """:func:`to_numpy_batch` then :func:`as_tensors`: raw columns -> model input tensors on ``device``.
    Shapes: ids (B,), history (B, N), context (B,)."""
    return as_tensors(to_numpy_batch(batch, schema), device)
