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
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from twotower import storage

VOCAB_DIR = "vocab"


def vocab_table(raw: Sequence[str] | pa.Array, start: int = 1) -> pa.Table:
    """Vocabulary table: ``raw`` string, ``idx`` int32 = start, start+1, ... (index 0, unknown,
    has no row)."""
    raw_arr = raw if isinstance(raw, pa.Array) else pa.array(list(raw), pa.string())
    idx = np.arange(start, start + len(raw_arr), dtype=np.int32)
    return pa.table({"raw": raw_arr.cast(pa.string()), "idx": pa.array(idx)})


def write_vocab(out: Path, name: str, raw: Sequence[str] | pa.Array) -> None:
    """Write ``out/vocab/<name>.parquet`` (``out`` a local directory; see :func:`vocab_table`)."""
    (out / VOCAB_DIR).mkdir(parents=True, exist_ok=True)
    pq.write_table(vocab_table(raw), out / VOCAB_DIR / f"{name}.parquet")


def read_vocab(dataset_dir: str | Path, name: str) -> dict[str, int] | None:
    """``vocab/<name>.parquet`` of a local or URI dataset as {raw value: index}, or None when the dataset
    has no such file."""
    fs, path = storage.resolve(storage.join(dataset_dir, VOCAB_DIR, f"{name}.parquet"))
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    table = pq.read_table(path, columns=["raw", "idx"], filesystem=fs)
    return dict(zip(table["raw"].to_pylist(), (int(i) for i in table["idx"].to_pylist())))
