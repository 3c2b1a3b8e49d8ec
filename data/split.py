"""Train/valid/test split codes of interactions sorted by (user, timestamp, original row order).

All functions work on interactions already sorted by (user, timestamp, original row order) -- see
:func:`sort_order` -- and on any slice of them that holds complete users (see :func:`user_chunks`).
Within one user's sorted sequence the split codes never decrease (train, then valid, then test) for
both methods, which :mod:`twotower.data.sequences` relies on.
"""
from __future__ import annotations

import numpy as np

TRAIN, VALID, TEST = 0, 1, 2
SPLITS = ("train", "valid", "test")
SPLIT_METHODS = ("leave_last_out", "temporal")


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
