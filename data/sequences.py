"""The prepared sequences: every interaction stored once, per user, and examples cut from them.

``sequences/part-*.parquet`` (layout in :mod:`twotower.model.schema`) has one row per user, or per
window of ``sequence_window`` interactions for a longer user. Columns (:func:`sequence_schema`):

* ``user_idx`` int32; ``start`` int64: position of the row's first entry in the user's sequence;
  ``prefix`` int32: leading entries repeated from the previous window (history only, not examples);
* ``item_idx`` list<int32>, ``timestamp`` list<int64> (unix seconds), ``split`` list<int8>
  (0 train, 1 valid, 2 test; never decreasing), ``weight`` list<float32> (weighted datasets), one list
  column per stored context feature (float32 raw values for numeric / bucketized, int32 indices for
  categorical, list<int32> for multi_hot);
* ``seen_before`` list<int32> / ``seen_before_split`` list<int8>: for a window after the first that
  holds valid or test interactions, the distinct items of the user before the row's first entry and
  the lowest split code each had (empty otherwise), so ``seen_items`` is exact without other rows.

Each file's footer has ``twotower.events``: JSON ``{"train": n, "valid": n, "test": n}`` interactions.

:func:`cut_examples` turns a batch of rows into model examples of one split: an example per interaction
of that split, its ``history`` the ``history_length`` items strictly before it (most recent first,
0-padded), and for valid/test ``seen_items``: the user's items of the earlier splits (train for valid,
train and valid for test), excluded at ranking. No example sees itself or a later interaction.
A model may ask for a longer history than ``schema.history_length`` (the sequence encoder reads
``max_sequence_length`` items): exact for every user within one row (``sequence_window`` interactions,
16,384 by default); an interaction in a later window of a longer user sees at most its row's items,
at least the ``schema.history_length`` prefix.

:func:`cut_windows` cuts the train interactions into windows for training on every position: fixed
(W, L) arrays, each row up to L consecutive (input, next item) pairs of one user.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from twotower import storage
from twotower.data.features import context_features
from twotower.data.split import SPLITS, TRAIN, group_bounds
from twotower.model.batch import pad_lists
from twotower.model.schema import DatasetSchema, Feature

SEQUENCES_DIR = "sequences"
EVENTS_KEY = b"twotower.events"
SEEN_COLUMN = "seen_items"
LIST_TYPES = {"numeric": pa.float32(), "bucketized": pa.float32(), "categorical": pa.int32(),
              "multi_hot": pa.list_(pa.int32())}


def sequence_schema(schema: DatasetSchema) -> pa.Schema:
    """Arrow schema of ``sequences/part-*.parquet`` for ``schema`` (see the module docstring)."""
    fields = [pa.field("user_idx", pa.int32()), pa.field("start", pa.int64()), pa.field("prefix", pa.int32()),
              pa.field("item_idx", pa.list_(pa.int32())), pa.field("timestamp", pa.list_(pa.int64())),
              pa.field("split", pa.list_(pa.int8()))]
    if schema.weighted:
        fields.append(pa.field("weight", pa.list_(pa.float32())))
    fields += [pa.field(f.name, pa.list_(LIST_TYPES[f.kind])) for f in schema.stored_context]
    fields += [pa.field("seen_before", pa.list_(pa.int32())), pa.field("seen_before_split", pa.list_(pa.int8()))]
    return pa.schema(fields)


def read_events_metadata(metadata: Mapping[bytes, bytes] | None) -> dict[str, int] | None:
    """``{"train", "valid", "test"}`` interaction counts from a sequences file's footer metadata, or None."""
    raw = (metadata or {}).get(EVENTS_KEY)
    if raw is None:
        return None
    counts = json.loads(raw)
    return {s: int(counts.get(s, 0)) for s in SPLITS}


def _list(offsets: np.ndarray, values) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.asarray(offsets, np.int32)), values)


def build_sequence_rows(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, split: np.ndarray,
                        schema: DatasetSchema, columns: Mapping[str, object] | None = None) -> pa.Table:
    """Sequence rows (:func:`sequence_schema`) of interactions sorted by (user, timestamp, raw row order).

    Args:
        user, item: int arrays (n,) of user / item indices. timestamp: int64 (n,) unix seconds.
        split: int8 (n,) split codes, never decreasing within a user.
        schema: gives ``history_length`` (the prefix), ``sequence_window``, ``weighted`` and the stored
            context features. columns: per-interaction arrays (n,) for ``weight`` and every stored context
            feature (numpy arrays; a pyarrow list array for multi_hot).
    Returns:
        one row per user and window, in input order.
    Raises:
        KeyError: a column the schema needs is missing from ``columns``.
    """
    columns = dict(columns or {})
    user = np.asarray(user)
    starts, lengths = group_bounds(user)
    window, prefix_len = schema.sequence_window, schema.history_length
    n_windows = -(-lengths // window)
    row_user = np.repeat(np.arange(len(starts)), n_windows)
    k = np.arange(len(row_user)) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)   # window number
    own_lo = k * window
    own_hi = np.minimum(own_lo + window, lengths[row_user])
    lo = np.maximum(own_lo - prefix_len, 0)
    row_len = own_hi - lo
    offsets = np.r_[0, np.cumsum(row_len)]
    take = np.repeat(starts[row_user] + lo - offsets[:-1], row_len) + np.arange(offsets[-1])  # flat entry index
    out = {"user_idx": pa.array(user[starts[row_user]].astype(np.int32)), "start": pa.array(lo.astype(np.int64)),
           "prefix": pa.array((own_lo - lo).astype(np.int32)),
           "item_idx": _list(offsets, pa.array(np.asarray(item, np.int32)[take])),
           "timestamp": _list(offsets, pa.array(np.asarray(timestamp, np.int64)[take])),
           "split": _list(offsets, pa.array(np.asarray(split, np.int8)[take]))}
    names = (["weight"] if schema.weighted else []) + [f.name for f in schema.stored_context]
    kinds = {f.name: f.kind for f in schema.stored_context} | {"weight": "numeric"}
    for name in names:
        if name not in columns:
            raise KeyError(f"build_sequence_rows: missing column {name!r}")
        col = columns[name]
        if kinds[name] == "multi_hot":
            values = pa.array(col, pa.list_(pa.int32())) if not isinstance(col, pa.Array) else col
            out[name] = _list(offsets, values.take(pa.array(take)))
        else:
            out[name] = _list(offsets, pa.array(np.asarray(col)[take].astype(LIST_TYPES[kinds[name]].to_pandas_dtype())))
    seen, seen_split = _seen_before(item, split, starts[row_user], lo, own_hi)
    out["seen_before"], out["seen_before_split"] = seen, seen_split
    return pa.table(out, schema=sequence_schema(schema))


def _seen_before(item, split, user_start, lo, own_hi) -> tuple[pa.Array, pa.Array]:
    """``seen_before`` / ``seen_before_split`` (module docstring) of rows whose user starts at flat
    index ``user_start`` and that hold entries ``lo:own_hi`` of it: filled only for rows with earlier
    entries outside the row and valid or test interactions (users longer than a window: rare, so a
    Python loop over them is fine)."""
    item, split = np.asarray(item), np.asarray(split)
    lists, codes = [np.zeros(0, np.int32)] * len(lo), [np.zeros(0, np.int8)] * len(lo)
    for r in np.flatnonzero(lo > 0):
        a = user_start[r]
        if split[a + lo[r]:a + own_hi[r]].max(initial=TRAIN) == TRAIN:
            continue
        before_items, before_split = item[a:a + lo[r]], split[a:a + lo[r]]
        order = np.lexsort((before_split, before_items))
        first = np.r_[True, before_items[order][1:] != before_items[order][:-1]]
        lists[r] = before_items[order][first].astype(np.int32)
        codes[r] = before_split[order][first].astype(np.int8)
    offsets = np.r_[0, np.cumsum([len(x) for x in lists])]
    return (_list(offsets, pa.array(np.concatenate(lists), pa.int32())),
            _list(offsets, pa.array(np.concatenate(codes), pa.int8())))


def _flat(column) -> tuple[np.ndarray, np.ndarray]:
    """(lengths int64 (rows,), flat values) of a pyarrow list column (slices handled by pyarrow)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64)
    return lengths, pc.list_flatten(column)


def _entries(rows: pa.Table) -> tuple[np.ndarray, ...]:
    """Flat ``(items int64, split, row of each entry, position in its row, row lengths)`` of rows."""
    lengths, items_flat = _flat(rows["item_idx"])
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(len(row_of)) - (np.cumsum(lengths) - lengths)[row_of]
    return items_flat.to_numpy().astype(np.int64), _flat(rows["split"])[1].to_numpy(), row_of, pos, lengths


def cut_examples(rows: pa.Table, split_code: int, schema: DatasetSchema, *, with_seen: bool = False,
                 history_length: int | None = None, history_time: bool = False) -> dict[str, np.ndarray]:
    """The examples of split ``split_code`` held by a batch of sequence rows, in model dtypes.

    Args:
        rows: sequence rows (at least ``user_idx``, ``prefix``, ``item_idx``, ``timestamp``, ``split``, the
            stored context columns, ``weight`` when weighted, and ``seen_before*`` when ``with_seen``).
        split_code: 0 train, 1 valid, 2 test. with_seen: also return ``seen_items`` (valid/test).
        history_length: N (default ``schema.history_length``; a longer one is limited by the row, see
            the module docstring). history_time: also return ``history_timestamp``.
    Returns:
        ``user_idx``, ``item_idx``, ``timestamp`` int64 (B,); ``history`` int64 (B, N) (the N items
        strictly before, most recent first, 0-padded); ``history_timestamp`` int64 (B, N) (their
        timestamps, 0 at padding) with ``history_time``; every
        context feature (numeric / bucketized float32 (B,), raw; categorical int64 (B,); multi_hot int64
        (B, L)); ``weight`` float32 (B,) when weighted; ``seen_items`` (with_seen): object (B,) of int64
        arrays, the user's distinct items of the earlier splits, ascending.
    """
    n_hist = history_length or schema.history_length
    items, split, row_of, pos, lengths = _entries(rows)
    prefix = rows["prefix"].to_numpy().astype(np.int64)
    idx = np.flatnonzero((pos >= prefix[row_of]) & (split == split_code))
    back = idx[:, None] - 1 - np.arange(n_hist)[None, :]
    keep = np.arange(n_hist)[None, :] < pos[idx][:, None]
    all_ts = _flat(rows["timestamp"])[1].to_numpy().astype(np.int64)
    ts = all_ts[idx]
    out = {"user_idx": rows["user_idx"].to_numpy().astype(np.int64)[row_of[idx]],
           "item_idx": items[idx], "timestamp": ts,
           "history": np.where(keep, items[np.maximum(back, 0)], 0)}
    if history_time:
        out["history_timestamp"] = np.where(keep, all_ts[np.maximum(back, 0)], 0)
    derived = context_features(ts)
    for f in schema.context_features:
        out[f.name] = _context_column(f, rows, idx, derived)
    if schema.weighted:
        out["weight"] = _flat(rows["weight"])[1].to_numpy().astype(np.float32)[idx]
    if with_seen:
        out[SEEN_COLUMN] = _seen_items(rows, items, split, lengths, row_of[idx], split_code)
    return out


def cut_windows(rows: pa.Table, schema: DatasetSchema, max_length: int) -> dict[str, np.ndarray]:
    """Training windows of every position: a row's train interactions after its first entry (and after
    its ``prefix``) are the targets, each predicted from the entry before it; a row's targets are split
    into windows of ``max_length`` = L from the most recent backwards (its oldest window may be shorter),
    so every target is in exactly one window; windows come in row order, oldest first within a row.

    Returns W windows as fixed-width arrays, each left-aligned and 0-padded on the right: ``user_idx``
    int64 (W,); ``items`` int64 (W, L) (the inputs); ``targets`` int64 (W, L) (the next item, 0 =
    padding); ``positions`` int64 (W, L) (the target's position in the user's whole sequence: the row's
    ``start`` + its index in the row); ``timestamps`` int64 (W, L) (of the inputs); ``mask`` bool (W, L)
    (``targets > 0``); every context feature of the target event (numeric / bucketized float32 (W, L),
    categorical int64 (W, L), multi_hot int64 (W, L, M)); ``weight`` float32 (W, L) when weighted.
    """
    items, split, row_of, pos, lengths = _entries(rows)
    prefix = rows["prefix"].to_numpy().astype(np.int64)
    tgt = np.flatnonzero((pos >= np.maximum(prefix[row_of], 1)) & (split == TRAIN))      # ascending
    r = row_of[tgt]
    count = np.bincount(r, minlength=len(lengths))
    rank = np.arange(len(tgt)) - (np.cumsum(count) - count)[r]             # index among its row's targets
    from_end = (count[r] - 1 - rank) // max_length                           # window number from the row's end
    n_win = -(-count // max_length)
    win = (np.cumsum(n_win) - n_win)[r] + n_win[r] - 1 - from_end
    slot = rank - np.maximum(count[r] - (from_end + 1) * max_length, 0)
    shape = (int(n_win.sum()), max_length)
    ts = _flat(rows["timestamp"])[1].to_numpy().astype(np.int64)

    def place(values: np.ndarray, fill=0) -> np.ndarray:
        out = np.full(shape + values.shape[1:], fill, dtype=values.dtype)
        out[win, slot] = values
        return out

    start = rows["start"].to_numpy().astype(np.int64)
    out = {"user_idx": rows["user_idx"].to_numpy().astype(np.int64)[np.repeat(np.arange(len(lengths)), n_win)],
           "items": place(items[tgt - 1]), "targets": place(items[tgt]), "positions": place(start[r] + pos[tgt]),
           "timestamps": place(ts[tgt - 1]), "mask": place(np.ones(len(tgt), bool), False)}
    derived = context_features(ts[tgt])
    for f in schema.context_features:
        out[f.name] = place(_context_column(f, rows, tgt, derived))
    if schema.weighted:
        out["weight"] = place(_flat(rows["weight"])[1].to_numpy().astype(np.float32)[tgt])
    return out


def _context_column(f: Feature, rows: pa.Table, idx: np.ndarray, derived: dict[str, np.ndarray]) -> np.ndarray:
    if not f.stored:
        value = derived[f.name]
        return value.astype(np.float32) if f.kind in ("numeric", "bucketized") else value.astype(np.int64)
    values = _flat(rows[f.name])[1]
    if f.kind == "multi_hot":
        return pad_lists(values.take(pa.array(idx)), max(f.max_length, 1))
    arr = values.to_numpy(zero_copy_only=False)[idx]
    return arr.astype(np.float32) if f.kind in ("numeric", "bucketized") else arr.astype(np.int64)


def _seen_items(rows: pa.Table, items: np.ndarray, split: np.ndarray, lengths: np.ndarray,
                example_rows: np.ndarray, split_code: int) -> np.ndarray:
    """Per example: distinct items of its row with a lower split code, plus ``seen_before`` items whose
    lowest split code is lower; computed once per row (every such entry precedes the row's examples)."""
    before_len, before_items = _flat(rows["seen_before"])
    before_items = before_items.to_numpy().astype(np.int64)
    before_split = _flat(rows["seen_before_split"])[1].to_numpy()
    row_end, before_end = np.cumsum(lengths), np.cumsum(before_len)
    per_row = {}
    out = np.empty(len(example_rows), dtype=object)
    for j, r in enumerate(example_rows.tolist()):
        if r not in per_row:
            a, b = row_end[r] - lengths[r], row_end[r]
            own = items[a:b][split[a:b] < split_code]
            c, d = before_end[r] - before_len[r], before_end[r]
            earlier = before_items[c:d][before_split[c:d] < split_code]
            per_row[r] = np.unique(np.concatenate([own, earlier]))
        out[j] = per_row[r]
    return out


def example_columns(schema: DatasetSchema, with_seen: bool = False) -> list[str]:
    """Sequence columns :func:`cut_examples` and :func:`cut_windows` read for ``schema``."""
    cols = ["user_idx", "start", "prefix", "item_idx", "timestamp", "split"]
    cols += (["weight"] if schema.weighted else []) + [f.name for f in schema.stored_context]
    return cols + (["seen_before", "seen_before_split"] if with_seen else [])


def own_split_counts(rows: pa.Table) -> dict[str, int]:
    """Interactions per split among the rows' own entries (prefix entries are not counted)."""
    lengths, split = _flat(rows["split"])
    split = split.to_numpy()
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(len(split)) - (np.cumsum(lengths) - lengths)[row_of]
    own = pos >= rows["prefix"].to_numpy().astype(np.int64)[row_of]
    return {s: int(c) for s, c in zip(SPLITS, np.bincount(split[own].astype(np.int64), minlength=3)[:3])}


def write_sequence_file(rows: pa.Table, path: str, row_group_rows: int = 4096) -> dict[str, int]:
    """Write sequence rows to one parquet file (local path or URI; zstd) with the ``twotower.events``
    footer; returns that count ``{"train", "valid", "test"}``."""
    counts = own_split_counts(rows)
    fs, inner = storage.resolve(path)
    table = rows.replace_schema_metadata({EVENTS_KEY: json.dumps(counts).encode()})
    pq.write_table(table, inner, filesystem=fs, compression="zstd", row_group_size=row_group_rows)
    return counts
