"""The users and items tables of a spec -> ``users.parquet`` / ``items.parquet`` rows, features and vocabularies.

A table is read whole on the driver (it holds one row per user or item, never the interactions):
:func:`read_entities` checks its columns, ids (null, empty and duplicate ids are errors naming the rows)
and values; :func:`encode_entities` aligns it to the user or item vocabulary (row i = index i, row 0
and ids missing from the table = unknown: index 0, NaN, empty list, zero vector) and builds each
feature (module :mod:`twotower.data.spec` lists the kinds):

* categorical / multi_hot: a vocabulary of the table's values seen at least ``min_count`` times;
* numeric: raw float32, ``mean`` / ``std`` of the known values into the schema (std 1 when constant);
* bucketized: raw float32, ``boundaries`` given or the distinct ``quantiles`` of the known values;
* text: :func:`twotower.data.features.hash_tokens` buckets (``hashed_bag``);
* vector: float32 (n, dim), fixed-size lists.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from twotower.data import normalize as N
from twotower.data.events import Lookup
from twotower.data.features import hash_tokens
from twotower.data.raw import check_columns, expand, file_format, read_whole
from twotower.data.spec import FeatureSpec, TableSpec
from twotower.data.vocab import vocab_order
from twotower.model.schema import Feature

DEFAULT_TEXT_TOKENS = 16


def read_entities(src: TableSpec, key: str) -> tuple[pa.Table, list[str]]:
    """(raw table with ``id`` string, the title and feature columns, ``_file``, ``_row``; its files).
    ``key``: ``users`` or ``items`` (for messages). Raises DataFormatError (missing column, bad id,
    duplicate id: naming the file, the column, the row and the value)."""
    files = expand(src, f"{key}.path")
    needed = {src.id: f"{key}.id"} | ({src.title: f"{key}.title"} if src.title else {})
    needed |= {f.column or name: f"{key}.features.{name}.column" for name, f in src.features.items()
               if f.table is None}
    for path in files:
        check_columns(path, src, needed)
    table = read_whole(files, src, list(needed))
    at = _rows(table, files, src)
    ids = N.ids(table, src.id, at)
    table = table.set_column(table.column_names.index(src.id), src.id, ids)
    counts = pc.value_counts(ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dup):
        value = dup.field("values")[0].as_py()
        first, second = np.flatnonzero(pc.equal(ids, value).to_numpy(zero_copy_only=False))[:2]
        raise at.error(int(second), src.id, f"duplicate id {value!r} (also at {at.where(int(first))}; "
                                            f"{key}.id must be unique)", value)
    return table, files


def _rows(table: pa.Table, files: list[str], src: TableSpec) -> N.Rows:
    return N.Rows(files[0], table["_row"].to_numpy(), csv=file_format(files[0], src) == "csv",
                  header=src.csv.header, files=tuple(files), file_idx=table["_file"].to_numpy())


def encode_entities(table: pa.Table | None, src: TableSpec | None, vocab: np.ndarray, key: str, min_count: int,
                    files: list[str] | None = None) -> tuple[dict[str, pa.Array], tuple[Feature, ...], dict[str, np.ndarray]]:
    """Feature columns aligned to ``vocab`` (the raw ids of indices 1..n; row 0 unknown), the schema
    Features and the categorical / multi-hot vocabularies to write. ``table`` None: no features."""
    if table is None or src is None:
        return {}, (), {}
    at = _rows(table, files or [key], src)
    pos = Lookup(table[src.id].combine_chunks().to_numpy(zero_copy_only=False))(pa.array(vocab.tolist(), pa.string()))
    rows = np.r_[-1, pos.astype(np.int64) - 1]            # table row of each index, -1 = not in the table
    columns, features, vocabs = {}, [], {}
    if src.title:
        titles = np.array(N.texts(table, src.title) + [""], dtype=object)
        columns["title"] = pa.array(titles[rows].tolist(), pa.string())
    for name, f in src.features.items():
        col, feat, vocab_values = _feature(table, f.column or name, name, f, rows, at, min_count, src.id)
        columns[name], vocabs[name] = col, vocab_values
        features.append(feat)
    return columns, tuple(features), {k: v for k, v in vocabs.items() if v is not None}


def _long_lists(table: pa.Table, src_id: str, column: str, name: str, f: FeatureSpec) -> pa.Array:
    """Per row of ``table``: the values of ``column`` in the feature's long ``table`` whose id is the row's id
    (list<string>, in the long table's order; empty when the id has none)."""
    long, key = f.table, f"features.{name}.table"
    files = expand(long, f"{key}.path")
    for path in files:
        check_columns(path, long, {long.id: f"{key}.id", column: f"features.{name}.column"})
    raw = read_whole(files, long, [long.id, column])
    pairs = pa.table({"id": N.ids(raw, long.id, _rows(raw, files, long)), "v": N.categories(raw, column)})
    grouped = pairs.filter(pc.is_valid(pairs["v"])).group_by("id", use_threads=False).aggregate([("v", "list")])
    pos = Lookup(grouped["id"].combine_chunks().to_numpy(zero_copy_only=False))(table[src_id].combine_chunks())
    lists = grouped["v_list"].combine_chunks()
    return pa.array([lists[p - 1].as_py() if p > 0 else [] for p in pos.tolist()], pa.list_(pa.string()))


def _feature(table, column, name, f: FeatureSpec, rows: np.ndarray, at, min_count: int, src_id: str = ""):
    known = rows >= 0
    if f.kind in ("numeric", "bucketized"):
        values = np.r_[N.numbers(table, column, at), np.nan][rows].astype(np.float32)
        finite = values[known & np.isfinite(values)].astype(np.float64)
        if f.kind == "numeric":
            mean, std = (float(finite.mean()), float(finite.std())) if len(finite) else (0.0, 1.0)
            return pa.array(values), Feature(name, "numeric", mean=mean, std=std if std > 0 else 1.0), None
        return pa.array(values), Feature(name, "bucketized", boundaries=tuple(bucket_boundaries(f, finite))), None
    if f.kind == "categorical":
        raw = N.categories(table, column)
        vocab = _cut(pc.value_counts(pc.drop_null(raw)), f.min_count or min_count)
        codes = np.r_[Lookup(vocab)(raw), 0][rows]
        return pa.array(codes.astype(np.int32)), Feature(name, "categorical", cardinality=len(vocab) + 1), vocab
    if f.kind == "multi_hot":
        lists = _long_lists(table, src_id, column, name, f) if f.table is not None else \
            N.value_lists(table, column, f.separator, at)
        vocab = _cut(pc.value_counts(pc.list_flatten(lists)), f.min_count or min_count)
        codes = Lookup(vocab)(pc.list_flatten(lists))
        lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
        encoded = _aligned_lists([sorted(set(x[x > 0].tolist()))[:f.max_length] for x in
                                  np.split(codes, np.cumsum(lengths)[:-1])] if len(lengths) else [], rows)
        longest = max((len(x) for x in encoded), default=0)
        return (pa.array(encoded, pa.list_(pa.int32())),
                Feature(name, "multi_hot", cardinality=len(vocab) + 1, max_length=max(longest, 1)), vocab)
    if f.kind == "text":
        length = f.max_length or DEFAULT_TEXT_TOKENS
        encoded = _aligned_lists([hash_tokens(t, f.buckets, length) for t in N.texts(table, column)], rows)
        return (pa.array(encoded, pa.list_(pa.int32())),
                Feature(name, "hashed_bag", cardinality=f.buckets, max_length=length), None)
    values = np.r_[N.vectors(table, column, f.dim, at), np.zeros((1, f.dim), np.float32)][rows]
    return (pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), f.dim),
            Feature(name, "vector", dim=f.dim), None)


def _aligned_lists(per_row: list[list[int]], rows: np.ndarray) -> list[list[int]]:
    table_rows = per_row + [[]]
    return [table_rows[r] for r in rows.tolist()]


def _cut(value_counts: pa.StructArray, min_count: int) -> np.ndarray:
    """Vocabulary (vocab_order) of the values counted at least ``min_count`` times."""
    keep = pc.greater_equal(value_counts.field("counts"), min_count)
    return vocab_order(value_counts.field("values").filter(keep))


def bucket_boundaries(f: FeatureSpec, values: np.ndarray) -> list[float]:
    """``f.boundaries``, or the distinct inner quantiles of ``values`` for ``f.quantiles`` equal-count
    buckets (one boundary at the value when every value is equal; [0.0] without values)."""
    if f.boundaries is not None:
        return [float(b) for b in f.boundaries]
    if len(values) == 0:
        return [0.0]
    qs = np.quantile(values, np.linspace(0, 1, f.quantiles + 1)[1:-1])
    return [float(b) for b in np.unique(qs)] or [float(values[0])]
