"""Reading the splits of a prepared dataset: its sequence files (``DATASET/sequences/part-*.parquet``,
local or URI; format in :mod:`twotower.data.sequences`), interactions per split from their footers, the
footer + column check run before training or evaluation, and the in-process example reader.

Every split is cut from the same files: an example of split s is an interaction with split code s
(``SPLIT_CODES``), its ``history`` and ``seen_items`` cut from its own row (:func:`cut_chunks`). The
number of examples of a split is the sum of the files' ``twotower.events`` footer counts, so it is
known before any data is read (steps per epoch, eval sizes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pyarrow.types as pat

from twotower import storage
from twotower.data.errors import DataFormatError
from twotower.data.parquet_check import BadParquetFile, column_problem, raise_for_bad_files, read_footer
from twotower.data.sequences import (EVENTS_KEY, SEEN_COLUMN, SEQUENCES_DIR, cut_examples, cut_windows,
                                     example_columns, read_events_metadata, sequence_schema)
from twotower.data.split import SPLITS
from twotower.model.schema import DatasetSchema

__all__ = ["SEEN_COLUMN", "SPLIT_CODES", "check_splits", "cut_chunks", "iter_split_examples", "read_split_examples",
           "sequence_files", "sequence_required_columns", "split_num_rows"]

SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}
CUT_ENTRIES = 131_072        # sequence entries cut at a time: bounds the example arrays of one cut (~50 MiB at N=50)
READ_ROWS = 1024             # sequence rows per pyarrow record batch in the in-process reader


def split_code(split: str) -> int:
    """0 / 1 / 2 for ``"train"`` / ``"valid"`` / ``"test"``; ValueError naming the split otherwise."""
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return SPLIT_CODES[split]


def sequence_files(dataset_dir: str | Path) -> list[str]:
    """Sorted parquet files of ``DATASET/sequences`` (absolute paths, or URIs for a URI dataset).

    Raises:
        FileNotFoundError: no sequence file (not a prepared dataset of this format).
    """
    directory = storage.join(storage.normalize(dataset_dir), SEQUENCES_DIR)
    files = storage.files_with_suffix(directory, ".parquet")
    if not files:
        raise FileNotFoundError(f"{directory}: no parquet files (is {dataset_dir} a prepared dataset?)")
    return files


def sequence_required_columns(schema: DatasetSchema) -> dict[str, str]:
    """Columns (name -> kind, see ``twotower.data.parquet_check``) every sequence file must have:
    those of :func:`~twotower.data.sequences.sequence_schema` (ids, lists, weight, stored context)."""
    def kind(t: pa.DataType) -> str:
        if pat.is_integer(t):
            return "integer"
        inner = t.value_type
        if pat.is_list(inner):
            return "integer_list_list"
        return "integer_list" if pat.is_integer(inner) else "number_list"
    return {f.name: kind(f.type) for f in sequence_schema(schema)}


def _events(meta: pq.FileMetaData) -> tuple[dict[str, int] | None, str | None]:
    """(interactions per split, None) from a footer, or (None, reason)."""
    try:
        counts = read_events_metadata(meta.metadata)
    except (ValueError, TypeError, AttributeError) as e:
        return None, f"unreadable {EVENTS_KEY.decode()!r} footer metadata ({type(e).__name__}: {e})"
    if counts is None:
        return None, (f"no {EVENTS_KEY.decode()!r} footer metadata (interactions per split; not a sequences "
                      f"file written by `twotower prepare`)")
    return counts, None


def check_file(path: str, required: dict[str, str] | None = None) -> tuple[dict[str, int] | None, str | None]:
    """Footer check of one sequence file: ``(interactions per split, None)`` when usable, else
    ``(None, reason)`` (not parquet, a ``required`` column missing or of a wrong type, no
    ``twotower.events`` metadata). Reads only the footer."""
    meta, reason = read_footer(path)
    if meta is None:
        return None, reason
    reason = column_problem(meta.schema.to_arrow_schema(), required or {})
    return (None, reason) if reason else _events(meta)


def check_splits(dataset_dir: str | Path, schema: DatasetSchema, splits: tuple[str, ...] = ("train", "valid"),
                 skip_bad_files: bool = False) -> tuple[dict[str, list[str]], dict[str, int], list[BadParquetFile]]:
    """Footer + column check of every sequence file (no data read).

    Returns ``(files per split, interactions per split, skipped files)``: every split of ``splits`` gets
    the same list of usable files (all splits are cut from them); its count is the sum of their
    ``twotower.events`` footer counts. ``skipped`` is empty unless ``skip_bad_files``.

    Raises:
        DataFormatError: a bad file (garbage, truncated, missing column, wrong type, no ``twotower.events``
            metadata) without ``skip_bad_files``, or no usable file left; the message names the file.
        FileNotFoundError: the dataset has no sequence files.
    """
    for split in splits:
        split_code(split)
    required = sequence_required_columns(schema)
    good, bad, totals = [], [], dict.fromkeys(SPLITS, 0)
    for path in sequence_files(dataset_dir):
        counts, reason = check_file(path, required)
        if counts is None:
            bad.append(BadParquetFile(path, reason))
            continue
        good.append(path)
        for s in SPLITS:
            totals[s] += counts[s]
    if not skip_bad_files:
        raise_for_bad_files(bad, hint="; fix or remove it, or set skip_bad_files=true to leave bad files out")
    if not good:
        raise_for_bad_files(bad, hint="; no usable sequence file left")
    return {s: list(good) for s in splits}, {s: totals[s] for s in splits}, bad


def split_num_rows(dataset_dir: str | Path, split: str) -> int:
    """Interactions (= examples) of ``split`` from the sequence files' footers (no data read).

    Raises:
        DataFormatError: a file that is not parquet or has no ``twotower.events`` metadata (named).
        FileNotFoundError: no sequence file. ValueError: an unknown split.
    """
    split_code(split)
    total = 0
    for path in sequence_files(dataset_dir):
        counts, reason = check_file(path)
        if counts is None:
            raise DataFormatError(path, reason)
        total += counts[split]
    return total


def cut_chunks(rows: pa.Table, code: int, schema: DatasetSchema, *, with_seen: bool = False,
               max_entries: int = CUT_ENTRIES, history_length: int | None = None, history_time: bool = False,
               window_length: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """:func:`~twotower.data.sequences.cut_examples` over consecutive slices of ``rows`` holding at most
    ``max_entries`` list entries each (or one row, if longer): the same examples in the same order, in
    non-empty batches of bounded size (``user_idx``/``item_idx``/``timestamp`` int64 (B,), ``history``
    int64 (B, N) (N = ``history_length``, default the schema's), ``history_timestamp`` with
    ``history_time``, context, ``weight``, ``seen_items`` with ``with_seen``).

    With ``window_length`` = L the slices are cut into training windows instead
    (:func:`~twotower.data.sequences.cut_windows`, train split only: ``code`` must be 0): (W, L) arrays.

    Raises:
        ValueError: ``window_length`` with a split other than train.
    """
    if window_length is not None and code != SPLIT_CODES["train"]:
        raise ValueError(f"windows are cut from the train split only, got split code {code}")
    lengths = pc.fill_null(pc.list_value_length(rows["item_idx"]), 0).to_numpy(zero_copy_only=False)
    ends = np.cumsum(lengths)
    start = 0
    while start < rows.num_rows:
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + max_entries, side="right")), start + 1)
        part = rows.slice(start, stop - start)
        out = cut_windows(part, schema, window_length) if window_length is not None else cut_examples(
            part, code, schema, with_seen=with_seen, history_length=history_length, history_time=history_time)
        if len(out["user_idx"]):
            yield out
        start = stop


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def iter_split_examples(dataset_dir: str | Path, split: str, schema: DatasetSchema, batch_size: int = 1024, *,
                        with_seen: bool = False, files: list[str] | None = None, history_length: int | None = None,
                        history_time: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Stream the examples of ``split`` in-process (pyarrow ``iter_batches`` over the sequence files, only
    :func:`~twotower.data.sequences.example_columns`), in file and row order, in batches of
    ``batch_size`` examples (the last one shorter); columns as :func:`cut_chunks` (``history_length`` /
    ``history_time`` as there).

    Raises:
        FileNotFoundError: no sequence file. DataFormatError: a file lacks a column (named).
        ValueError: an unknown split or ``batch_size < 1``.
    """
    code = split_code(split)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    columns = example_columns(schema, with_seen)
    required = {k: v for k, v in sequence_required_columns(schema).items() if k in columns}
    pending, n = [], 0
    for path in files or sequence_files(dataset_dir):
        fs, inner = storage.resolve(path)
        pf = pq.ParquetFile(inner, filesystem=fs)
        reason = column_problem(pf.schema_arrow, required)
        if reason:
            raise DataFormatError(path, reason)
        for rb in pf.iter_batches(batch_size=READ_ROWS, columns=columns):
            for part in cut_chunks(pa.Table.from_batches([rb]), code, schema, with_seen=with_seen,
                                   history_length=history_length, history_time=history_time):
                pending.append(part)
                n += len(part["item_idx"])
                if n < batch_size:
                    continue
                merged = _concat(pending)
                for a in range(0, n - batch_size + 1, batch_size):
                    yield {k: v[a:a + batch_size] for k, v in merged.items()}
                rest = n % batch_size
                pending, n = ([{k: v[n - rest:] for k, v in merged.items()}] if rest else []), rest
    if n:
        yield _concat(pending)


def read_split_examples(dataset_dir: str | Path, split: str, schema: DatasetSchema, *, with_seen: bool = False
                        ) -> dict[str, np.ndarray] | None:
    """Every example of ``split`` in memory (:func:`iter_split_examples` concatenated), or None when the
    split has none. For small datasets, tests and benchmarks."""
    parts = list(iter_split_examples(dataset_dir, split, schema, 1 << 20, with_seen=with_seen))
    return _concat(parts) if parts else None
