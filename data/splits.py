"""The split files of a prepared dataset (``interactions/<split>/*.parquet``, local or URI): listing,
row counts from the footers, and the footer + column check run before training or evaluation."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from twotower import storage
from twotower.data.parquet_check import BadParquetFile, check_parquet_files, raise_for_bad_files
from twotower.model.schema import DatasetSchema

SEEN_COLUMN = "seen_items"


def split_files(dataset_dir: str | Path, split: str) -> list[str]:
    """Sorted parquet files of ``DATASET/interactions/<split>`` (absolute paths, or URIs for a URI dataset).

    Raises:
        FileNotFoundError: the split has no parquet file.
    """
    directory = storage.join(storage.normalize(dataset_dir), "interactions", split)
    files = storage.files_with_suffix(directory, ".parquet")
    if not files:
        raise FileNotFoundError(f"{directory}: no parquet files (is {dataset_dir} a prepared dataset?)")
    return files


def split_num_rows(dataset_dir: str | Path, split: str) -> int:
    """Row count of a split from the parquet footers (no data read)."""
    total = 0
    for path in split_files(dataset_dir, split):
        fs, inner = storage.resolve(path)
        total += pq.ParquetFile(inner, filesystem=fs).metadata.num_rows
    return total


def split_required_columns(schema: DatasetSchema, split: str) -> dict[str, str]:
    """Columns (name -> kind, see ``twotower.data.parquet_check``) a split's files must have."""
    cols = {"user_idx": "integer", "item_idx": "integer", "history": "integer_list"}
    cols.update({f.name: "number" if f.kind == "numeric" else "integer" for f in schema.context_features})
    if split != "train":
        cols[SEEN_COLUMN] = "integer_list"
    return cols


def check_splits(dataset_dir: str | Path, schema: DatasetSchema, splits: tuple[str, ...] = ("train", "valid"),
                 skip_bad_files: bool = False) -> tuple[dict[str, list[str]], dict[str, int], list[BadParquetFile]]:
    """Footer + column check of every parquet file of ``splits`` (no data read).

    Returns ``(files per split, rows per split, skipped files)``; ``skipped`` is empty unless
    ``skip_bad_files``.

    Raises:
        DataFormatError: a bad file (garbage, truncated, missing column, wrong type) without
            ``skip_bad_files``, or no usable file left in a split; the message names the file.
        FileNotFoundError: a split has no parquet files.
    """
    files, rows, skipped = {}, {}, []
    for split in splits:
        good, n, bad = check_parquet_files(split_files(dataset_dir, split), split_required_columns(schema, split))
        if not skip_bad_files:
            raise_for_bad_files(bad, hint="; fix or remove it, or set skip_bad_files=true to leave bad files out")
        if not good:
            raise_for_bad_files(bad, hint=f"; no usable file left in the {split} split")
        files[split], rows[split] = good, n
        skipped += bad
    return files, rows, skipped
