"""Turning columnar interaction batches (NumPy, from parquet / Ray Data) into model input tensors."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from .schema import DatasetSchema


def batch_columns(schema: DatasetSchema) -> list[str]:
    """Interaction columns the model reads: ids, history and every context feature, in a fixed order."""
    return ["user_idx", "item_idx", "history"] + [f.name for f in schema.context_features]


def stack_lists(column, length: int) -> np.ndarray:
    """Stack a column of equal- or unequal-length integer lists into an (B, length) int64 array.

    Accepts a 2-D array (returned as int64), or a 1-D object array / list of 1-D sequences; shorter
    lists are right-padded with 0 (the padding index), longer ones truncated.
    """
    if isinstance(column, np.ndarray) and column.ndim == 2:
        out = column.astype(np.int64, copy=False)
        if out.shape[1] == length:
            return out
        fixed = np.zeros((out.shape[0], length), dtype=np.int64)
        n = min(length, out.shape[1])
        fixed[:, :n] = out[:, :n]
        return fixed
    out = np.zeros((len(column), length), dtype=np.int64)
    for i, row in enumerate(column):
        if row is None:
            continue
        row = np.asarray(row, dtype=np.int64)[:length]
        out[i, : len(row)] = row
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
    out["history"] = stack_lists(batch["history"], schema.history_length)
    for f in schema.context_features:
        if f.name not in batch:
            raise KeyError(f"batch is missing context column {f.name!r}")
        dtype = np.float32 if f.kind == "numeric" else np.int64
        out[f.name] = np.asarray(batch[f.name]).astype(dtype, copy=False)
    return out


def to_tensors(batch: Mapping[str, np.ndarray], schema: DatasetSchema,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """`to_numpy_batch`, then `torch.from_numpy` on ``device``. Shapes: ids (B,), history (B, N)."""
    out = {}
    for k, v in to_numpy_batch(batch, schema).items():
        v = np.ascontiguousarray(v)
        out[k] = (torch.from_numpy(v) if v.flags.writeable else torch.tensor(v)).to(device)
    return out
