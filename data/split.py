"""Train/valid/test split, per-row ``history`` and ``seen_items``, as pyarrow tables.

All functions work on interactions already sorted by (user, timestamp, original row order) -- see
:func:`sort_order` -- and :func:`build_split_tables` works on any slice of those rows that holds
complete users (see :func:`user_chunks`), so callers can process users chunk by chunk and memory
stays bounded by the chunk size.

Within one user's sorted sequence the split codes never decrease (train rows, then valid rows,
then test rows) for both methods; ``seen_items`` of a valid/test row is therefore the set of items
of the user's first ``n_train`` (valid) or ``n_train + n_valid`` (test) rows.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from twotower.data.features import CONTEXT_FEATURES, context_features

TRAIN, VALID, TEST = 0, 1, 2
SPLITS = ("train", "valid", "test")
SPLIT_METHODS = ("leave_last_out", "temporal")


def interaction_schema(with_seen: bool) -> pa.Schema:
    """Arrow schema of ``interactions/{split}/part-*.parquet``: user_idx int32, item_idx int32,
    timestamp int64, rating float32, hour_sin/hour_cos float32, day_of_week int32, is_weekend
    float32, history list<int32>, and (valid/test) seen_items list<int32>."""
    ctx_types = {"numeric": pa.float32(), "categorical": pa.int32()}
    fields = [pa.field("user_idx", pa.int32()), pa.field("item_idx", pa.int32()),
              pa.field("timestamp", pa.int64()), pa.field("rating", pa.float32())]
    fields += [pa.field(f.name, ctx_types[f.kind]) for f in CONTEXT_FEATURES]
    fields.append(pa.field("history", pa.list_(pa.int32())))
    if with_seen:
        fields.append(pa.field("seen_items", pa.list_(pa.int32())))
    return pa.schema(fields)


def sort_order(user_idx: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Permutation (int64, shape (n,)) sorting rows by user, then timestamp, then original row
    order (np.lexsort is stable)."""
    return np.lexsort((np.asarray(timestamp), np.asarray(user_idx)))


def group_bounds(user_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets and lengths (int64, shape (num_groups,)) of the runs of equal user ids."""
    n = len(user_sorted)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, user_sorted[1:] != user_sorted[:-1]])
    return starts, np.diff(np.r_[starts, n])


def leave_last_out(user_sorted: np.ndarray) -> np.ndarray:
    """Split codes (int8, (n,)): per user the last row -> TEST, second last -> VALID, the rest ->
    TRAIN; users with fewer than 3 rows keep all rows in TRAIN."""
    starts, lengths = group_bounds(user_sorted)
    split = np.zeros(len(user_sorted), np.int8)
    big = lengths >= 3
    ends = (starts + lengths)[big]
    split[ends - 1] = TEST
    split[ends - 2] = VALID
    return split


def temporal_cuts(timestamps: np.ndarray, valid_fraction: float = 0.1,
                  test_fraction: float = 0.1) -> tuple[int, int]:
    """Global cut points (t_valid, t_test): rows with ts < t_valid are train, t_valid <= ts <
    t_test valid, ts >= t_test test; chosen as timestamp quantiles so that about the given
    fractions of rows fall in valid and test. Raises ValueError on bad fractions."""
    if not (0 <= valid_fraction and 0 <= test_fraction and valid_fraction + test_fraction < 1):
        raise ValueError(f"bad fractions valid={valid_fraction} test={test_fraction}")
    ts = np.sort(np.asarray(timestamps, dtype=np.int64))
    n = len(ts)
    top = int(ts[-1]) + 1

    def cut(frac_after: float) -> int:
        k = int(round(n * (1.0 - frac_after)))
        return top if k >= n else int(ts[k])

    return cut(valid_fraction + test_fraction), cut(test_fraction)


def temporal_split(timestamp: np.ndarray, cuts: tuple[int, int]) -> np.ndarray:
    """Split codes (int8) from the cut points of :func:`temporal_cuts`."""
    ts = np.asarray(timestamp)
    return ((ts >= cuts[0]).astype(np.int8) + (ts >= cuts[1]).astype(np.int8)).astype(np.int8)


def user_chunks(user_sorted: np.ndarray, max_rows: int) -> list[tuple[int, int]]:
    """(start, stop) row ranges covering all rows, cut only at user boundaries, each at most
    ``max_rows`` rows unless a single user has more."""
    starts, _ = group_bounds(user_sorted)
    n, out, lo = len(user_sorted), [], 0
    bounds = np.r_[starts, n]
    while lo < n:
        k = np.searchsorted(bounds, lo + max_rows, side="right") - 1
        hi = int(bounds[k])
        if hi <= lo:
            hi = int(bounds[np.searchsorted(bounds, lo, side="right")])
        out.append((lo, hi))
        lo = hi
    return out


def history_matrix(item_sorted: np.ndarray, pos: np.ndarray, history_length: int) -> np.ndarray:
    """``history`` of every row: int32 (n, history_length); column j holds the item of row
    r - 1 - j when that row is of the same user (``pos``, the row's position in its user's
    sequence, is > j), else 0. No row sees itself or any later row."""
    n = len(item_sorted)
    padded = np.concatenate([np.zeros(history_length, np.int32), np.asarray(item_sorted, np.int32)])
    # window k is padded[k:k+N] = items k-N..k-1; reversed it is rows k-1, k-2, ... (most recent first)
    windows = np.lib.stride_tricks.sliding_window_view(padded, history_length)[:n, ::-1]
    keep = np.arange(history_length)[None, :] < np.asarray(pos)[:, None]
    return np.where(keep, windows, np.int32(0))


def seen_lists(item_sorted: np.ndarray, first_row: np.ndarray, count: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """For m rows, the distinct items of ``item_sorted[first_row[k]:first_row[k] + count[k]]``,
    sorted ascending. Returns (offsets int32 (m+1,), values int32) for a pyarrow ListArray."""
    count = np.asarray(count, np.int64)
    total = int(count.sum())
    ends = np.cumsum(count)
    idx = np.repeat(np.asarray(first_row, np.int64) - (ends - count), count) + np.arange(total)
    modulus = np.int64(int(item_sorted.max(initial=0)) + 1)
    key = np.repeat(np.arange(len(count), dtype=np.int64), count) * modulus + item_sorted[idx]
    key.sort()
    key = key[np.r_[True, key[1:] != key[:-1]]] if len(key) else key
    per_row = np.bincount(key // modulus, minlength=len(count))
    offsets = np.r_[0, np.cumsum(per_row)].astype(np.int32)
    return offsets, (key % modulus).astype(np.int32)


def _list_array(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()))


def build_split_tables(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray,
                       rating: np.ndarray, split: np.ndarray, history_length: int
                       ) -> dict[str, pa.Table]:
    """Interaction tables of one chunk of sorted rows holding complete users.

    Args:
        user, item: int arrays (n,) of user/item indices, sorted by (user, timestamp, row order).
        timestamp: int64 (n,) unix seconds; rating: float (n,); split: int8 (n,) codes.
        history_length: N, the width of ``history``.

    Returns:
        ``{"train"|"valid"|"test": pa.Table}`` with the columns of :func:`interaction_schema`,
        rows in the input order.
    """
    item = np.asarray(item, np.int32)
    starts, lengths = group_bounds(user)
    first = np.repeat(starts, lengths)
    pos = np.arange(len(user)) - first
    hist = history_matrix(item, pos, history_length)
    ctx = context_features(timestamp)
    gid = np.repeat(np.arange(len(starts)), lengths)
    n_train = np.bincount(gid, weights=split == TRAIN, minlength=len(starts)).astype(np.int64)
    n_valid = np.bincount(gid, weights=split == VALID, minlength=len(starts)).astype(np.int64)
    tables = {}
    for code, name in enumerate(SPLITS):
        rows = np.flatnonzero(split == code)
        schema = interaction_schema(code != TRAIN)
        cols = [np.asarray(user, np.int32)[rows], item[rows],
                np.asarray(timestamp, np.int64)[rows], np.asarray(rating, np.float32)[rows]]
        cols += [ctx[f.name][rows] for f in CONTEXT_FEATURES]
        cols = [pa.array(c) for c in cols]
        h = hist[rows]
        cols.append(_list_array(np.arange(len(rows) + 1, dtype=np.int64) * history_length,
                                h.reshape(-1)))
        if code != TRAIN:
            g = gid[rows]
            earlier = n_train[g] if code == VALID else n_train[g] + n_valid[g]
            cols.append(_list_array(*seen_lists(item, first[rows], earlier)))
        tables[name] = pa.Table.from_arrays(cols, schema=schema)
    return tables
