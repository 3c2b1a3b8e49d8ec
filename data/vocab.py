"""Vocabulary files of a prepared dataset: ``vocab/<name>.parquet``, written by ``prepare`` and read by serving.

One row per known raw value: ``raw`` (string) and ``idx`` (int32, 1..n); index 0, the unknown value,
has no row. ``users`` and ``items`` map raw ids to indices; every categorical feature with raw values
(``gender``, ``day_of_week``, ...) has one too.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from twotower import storage

VOCAB_DIR = "vocab"
_INTEGER = r"^-?[0-9]{1,18}$"


def vocab_order(values: pa.Array | Sequence[str]) -> np.ndarray:
    """Distinct non-empty raw values in vocabulary order: integer-like values numerically first (ties by
    text), then the others as text; position p gets index p + 1 (0 = unknown). Object array of str.

    The same order as ``twotower.data.features.build_vocab``, computed with pyarrow (millions of ids)."""
    arr = values if isinstance(values, pa.Array) else pa.array(list(values), pa.string())
    arr = pc.unique(pc.drop_null(arr.cast(pa.string())))
    arr = arr.filter(pc.not_equal(arr, ""))
    is_int = pc.match_substring_regex(arr, _INTEGER).to_numpy(zero_copy_only=False)
    ints, texts = arr.filter(pa.array(is_int)), arr.filter(pa.array(~is_int))
    int_text = ints.to_numpy(zero_copy_only=False)
    order = np.lexsort((int_text, pc.cast(ints, pa.int64()).to_numpy()))
    texts = texts.take(pc.sort_indices(texts))
    return np.concatenate([int_text[order], texts.to_numpy(zero_copy_only=False)]).astype(object)


def vocab_table(raw: Sequence[str] | pa.Array, start: int = 1) -> pa.Table:
    """Vocabulary table: ``raw`` string, ``idx`` int32 = start, start+1, ... (index 0, unknown,
    has no row)."""
    raw_arr = raw if isinstance(raw, pa.Array) else pa.array(list(raw), pa.string())
    idx = np.arange(start, start + len(raw_arr), dtype=np.int32)
    return pa.table({"raw": raw_arr.cast(pa.string()), "idx": pa.array(idx)})


def write_vocab(out: str | Path, name: str, raw: Sequence[str] | pa.Array | np.ndarray) -> None:
    """Write ``out/vocab/<name>.parquet`` (``out`` a local directory or URI; see :func:`vocab_table`)."""
    if isinstance(raw, np.ndarray):
        raw = pa.array(raw.tolist(), pa.string())
    storage.makedirs(storage.join(out, VOCAB_DIR))
    fs, path = storage.resolve(storage.join(out, VOCAB_DIR, f"{name}.parquet"))
    pq.write_table(vocab_table(raw), path, filesystem=fs)


def read_vocab(dataset_dir: str | Path, name: str) -> dict[str, int] | None:
    """``vocab/<name>.parquet`` of a local or URI dataset as {raw value: index}, or None when the dataset
    has no such file."""
    fs, path = storage.resolve(storage.join(dataset_dir, VOCAB_DIR, f"{name}.parquet"))
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    table = pq.read_table(path, columns=["raw", "idx"], filesystem=fs)
    return dict(zip(table["raw"].to_pylist(), (int(i) for i in table["idx"].to_pylist())))
