"""The prepare job's work on interactions, as pure functions of one file or one partition (no Ray).

1. :func:`read_events`: one raw interaction file -> canonical event batches (``user_id``, ``item_id``
   strings, ``timestamp`` int64 seconds, ``weight`` float32, the context features under their feature
   names, ``_file`` / ``_row``), the row filter applied, every value checked.
2. :func:`group_partition`: a hash partition (all events of its users) -> sorted by (user, timestamp,
   file, row), identical (user, item, timestamp) rows dropped when ``deduplicate``.
3. :func:`count_values`: value counts of a set of events (users, items, categorical context values,
   timestamps) as rows ``(kind, value, count)``; the job sums them over partitions for the vocabularies
   and the k-core filter.
4. :func:`encode_partition`: a grouped partition -> index-encoded, split interactions, ready for
   :func:`twotower.data.sequences.build_sequence_rows`.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from twotower.data import normalize as N
from twotower.data.raw import READ_BATCH_ROWS, file_columns, file_format, iter_batches
from twotower.data.spec import DatasetSpec
from twotower.data.split import leave_last_out, temporal_split

ORDER = [("user_id", "ascending"), ("timestamp", "ascending"), ("_file", "ascending"), ("_row", "ascending")]


def interaction_columns(spec: DatasetSpec) -> dict[str, str]:
    """Raw columns an interaction file must have -> the spec key naming each."""
    it = spec.interactions
    cols = {it.user_id: "interactions.user_id", it.item_id: "interactions.item_id",
            it.timestamp: "interactions.timestamp"}
    if it.weight:
        cols[it.weight] = "interactions.weight"
    for name, f in spec.context.features.items():
        cols[f.column or name] = f"context.features.{name}.column"
    return cols


def read_events(path: str, file_index: int, spec: DatasetSpec, unit: str,
                batch_rows: int = READ_BATCH_ROWS) -> Iterator[pa.Table]:
    """Canonical event tables of one interaction file, at most ``batch_rows`` raw rows at a time (see the
    module docstring). ``unit``: ``seconds`` or ``milliseconds`` for numeric timestamps.

    Raises:
        DataFormatError: unreadable file, missing column, or a bad value (names file, column, row, value).
    """
    it = spec.interactions
    expr, used = (None, {})
    columns = list(interaction_columns(spec))
    if it.filter:
        expr, used = N.parse_filter(it.filter, file_columns(path, it))
        columns += [c for c in used if c not in columns]
    csv = file_format(path, it) == "csv"
    for row0, table in iter_batches(path, it, columns, batch_rows):
        at = N.Rows(path, np.arange(row0, row0 + table.num_rows), csv=csv, header=it.csv.header)
        if expr is not None:
            keep = N.apply_filter(table, expr, used, it.filter, at)
            table, at = table.filter(pa.array(keep)), N.Rows(path, at.rows[keep], csv, it.csv.header)
        if table.num_rows:
            yield _canonical(table, spec, unit, at, file_index)


def _canonical(table: pa.Table, spec: DatasetSpec, unit: str, at: N.Rows, file_index: int) -> pa.Table:
    it = spec.interactions
    out = {"user_id": N.ids(table, it.user_id, at), "item_id": N.ids(table, it.item_id, at),
           "timestamp": pa.array(N.timestamps(table, it.timestamp, unit, at))}
    if it.weight:
        out["weight"] = pa.array(N.weights(table, it.weight, at))
    for name, f in spec.context.features.items():
        col = f.column or name
        if f.kind in ("numeric", "bucketized"):
            out[name] = pa.array(N.numbers(table, col, at))
        elif f.kind == "categorical":
            out[name] = N.categories(table, col)
        else:
            out[name] = N.value_lists(table, col, f.separator, at)
    out["_file"] = pa.array(np.full(table.num_rows, file_index, np.int32))
    out["_row"] = pa.array(at.rows.astype(np.int64))
    return pa.table(out)


def group_partition(events: pa.Table, deduplicate: bool) -> tuple[pa.Table, int]:
    """(events sorted by (user_id, timestamp, _file, _row) with duplicates dropped, number dropped).

    A duplicate is a row with the same (user_id, item_id, timestamp) as an earlier row (in that order)."""
    events = events.sort_by(ORDER)
    if not deduplicate or events.num_rows == 0:
        return events, 0
    ranked = events.select(["user_id", "item_id", "timestamp"]).append_column(
        "_rank", pa.array(np.arange(events.num_rows, dtype=np.int64)))
    first = ranked.group_by(["user_id", "item_id", "timestamp"], use_threads=False).aggregate([("_rank", "min")])
    keep = np.zeros(events.num_rows, bool)
    keep[first["_rank_min"].to_numpy()] = True
    return events.filter(pa.array(keep)), int((~keep).sum())


def count_values(events: pa.Table, spec: DatasetSpec, with_timestamps: bool) -> pa.Table:
    """Rows ``(kind string, value string, count int64)``: ``user``, ``item``, ``ctx:<feature>`` (categorical
    and multi-hot values) and, with ``with_timestamps``, ``ts`` (values as decimal strings)."""
    parts = [("user", events["user_id"]), ("item", events["item_id"])]
    for name, f in spec.context.features.items():
        if f.kind == "categorical":
            parts.append((f"ctx:{name}", events[name]))
        elif f.kind == "multi_hot":
            parts.append((f"ctx:{name}", pc.list_flatten(events[name])))
    if with_timestamps:
        parts.append(("ts", pc.cast(events["timestamp"], pa.string())))
    tables = []
    for kind, values in parts:
        vc = pc.value_counts(pc.drop_null(values) if isinstance(values, pa.Array) else
                             pc.drop_null(values.combine_chunks()))
        n = len(vc)
        tables.append(pa.table({"kind": pa.array([kind] * n, pa.string()),
                                "value": vc.field("values").cast(pa.string()),
                                "count": vc.field("counts").cast(pa.int64())}))
    return pa.concat_tables(tables) if tables else pa.table({"kind": [], "value": [], "count": []})


@dataclass
class Lookup:
    """Raw value -> index (1..n; 0 unknown) through a pandas Index built once (vocabulary order)."""

    raw: np.ndarray
    _index: pd.Index | None = field(default=None, repr=False)

    def __call__(self, values: pa.Array) -> np.ndarray:
        if self._index is None:
            self._index = pd.Index(self.raw)
        pos = self._index.get_indexer(pd.Index(values.to_numpy(zero_copy_only=False)))
        return (pos + 1).astype(np.int32)          # not found (-1) -> 0, unknown

    def __getstate__(self):
        return {"raw": self.raw}

    def __setstate__(self, state):
        self.raw, self._index = state["raw"], None


def keep_mask(events: pa.Table, users: Lookup | None, items: Lookup | None) -> np.ndarray:
    """Rows whose user and item are in the k-core sets (``None``: every one)."""
    keep = np.ones(events.num_rows, bool)
    if users is not None:
        keep &= users(events["user_id"].combine_chunks()) > 0
    if items is not None:
        keep &= items(events["item_id"].combine_chunks()) > 0
    return keep


def encode_partition(events: pa.Table, spec: DatasetSpec, users: Lookup, items: Lookup,
                     context: dict[str, Lookup], cuts: tuple[int, int] | None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, object]]:
    """(user_idx int32, item_idx int32, timestamp int64, split int8, columns) of grouped events (sorted by
    user, then time): ids through the vocabularies, context categorical / multi-hot values through theirs,
    split codes by leave-last-out or the temporal ``cuts`` (valid_start, test_start)."""
    user = users(events["user_id"].combine_chunks())
    item = items(events["item_id"].combine_chunks())
    ts = events["timestamp"].to_numpy()
    split = temporal_split(ts, cuts) if cuts is not None else leave_last_out(user)
    columns: dict[str, object] = {}
    if spec.interactions.weight:
        columns["weight"] = events["weight"].to_numpy()
    for name, f in spec.context.features.items():
        col = events[name].combine_chunks()
        if f.kind in ("numeric", "bucketized"):
            columns[name] = col.to_numpy(zero_copy_only=False)
        elif f.kind == "categorical":
            columns[name] = context[name](pc.fill_null(col, "\x00")) if len(col) else np.zeros(0, np.int32)
        else:
            codes = context[name](pc.list_flatten(col)) if len(col) else np.zeros(0, np.int32)
            lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
            columns[name] = _index_lists(codes, lengths)
    return user, item, ts, split, columns


def _index_lists(codes: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """list<int32> of each row's distinct known indices, ascending (unknown values, index 0, dropped)."""
    row = np.repeat(np.arange(len(lengths)), lengths)
    key = row.astype(np.int64) * (int(codes.max(initial=0)) + 1) + codes
    key = np.unique(key[codes > 0])
    modulus = int(codes.max(initial=0)) + 1
    counts = np.bincount(key // modulus, minlength=len(lengths))
    return pa.ListArray.from_arrays(pa.array(np.r_[0, np.cumsum(counts)].astype(np.int32)),
                                    pa.array((key % modulus).astype(np.int32)))
