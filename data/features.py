"""Feature derivation shared by the MovieLens and synthetic preparers.

* context features from a unix timestamp (UTC): ``hour_sin``/``hour_cos`` (float32),
  ``day_of_week`` (int32, Monday=1 .. Sunday=7, 0 = unknown), ``is_weekend`` (float32 0/1);
* ``age_bucket`` codes (the ML-1M codes 1, 18, 25, 35, 45, 50, 56);
* release year from a MovieLens title and 5-year ``year_bucket`` values;
* ``title_tokens``: lower-cased word tokens hashed with CRC-32 into buckets 1..1023;
* vocabularies: sorted raw values -> indices 1..n (0 = unknown).
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

from twotower.model.schema import Feature

SECONDS_PER_DAY = 86_400
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
CONTEXT_FEATURES = (          # derived from the event timestamp (never stored; serving derives them too)
    Feature("hour_sin", "numeric", source="timestamp"),
    Feature("hour_cos", "numeric", source="timestamp"),
    Feature("day_of_week", "categorical", cardinality=8, source="timestamp"),
    Feature("is_weekend", "numeric", source="timestamp"),
)
AGE_CODES = (1, 18, 25, 35, 45, 50, 56)
TITLE_BUCKETS = 1024
TITLE_MAX_LENGTH = 16
YEAR_BUCKET_WIDTH = 5

_YEAR_RE = re.compile(r"\(\s*(\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\s*\)")
_TOKEN_RE = re.compile(r"\w+")


def context_features(timestamps: np.ndarray) -> dict[str, np.ndarray]:
    """Context columns for unix timestamps in seconds (interpreted as UTC).

    Args:
        timestamps: int array, shape (n,).

    Returns:
        ``hour_sin``/``hour_cos`` float32 (n,) = sin/cos(2*pi*h/24) with h the hour of day including
        the minutes and seconds fraction; ``day_of_week`` int32 (n,) Monday=1 .. Sunday=7;
        ``is_weekend`` float32 (n,) 1.0 on Saturday and Sunday else 0.0.
    """
    ts = np.asarray(timestamps, dtype=np.int64)
    seconds = ts % SECONDS_PER_DAY
    angle = seconds.astype(np.float64) * (2.0 * np.pi / SECONDS_PER_DAY)
    weekday0 = (ts // SECONDS_PER_DAY + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    return {
        "hour_sin": np.sin(angle).astype(np.float32),
        "hour_cos": np.cos(angle).astype(np.float32),
        "day_of_week": (weekday0 + 1).astype(np.int32),
        "is_weekend": (weekday0 >= 5).astype(np.float32),
    }


def age_bucket(ages: np.ndarray) -> np.ndarray:
    """Map raw ages in years to ML-1M age codes: <18 -> 1, 18-24 -> 18, 25-34 -> 25, 35-44 -> 35,
    45-49 -> 45, 50-55 -> 50, >=56 -> 56. Returns int32 array of the same shape."""
    codes = np.asarray(AGE_CODES, dtype=np.int32)
    pos = np.searchsorted(np.asarray(AGE_CODES[1:]), np.asarray(ages), side="right")
    return codes[pos]


def title_year(title: str) -> int:
    """Release year in a MovieLens title such as ``"Toy Story (1995)"`` (the last ``(YYYY)``
    group, ``(YYYY-YYYY)`` ranges allowed); 0 when there is none."""
    matches = list(_YEAR_RE.finditer(title))
    return int(matches[-1].group(1)) if matches else 0


def strip_year(title: str) -> str:
    """The title without its last ``(YYYY)`` group, whitespace-trimmed."""
    matches = list(_YEAR_RE.finditer(title))
    if not matches:
        return title.strip()
    m = matches[-1]
    return (title[:m.start()] + title[m.end():]).strip()


def year_bucket_raw(year: int) -> str:
    """Raw value of the ``year_bucket`` feature: first year of the 5-year bucket as a string,
    ``""`` (unknown) when ``year`` <= 0."""
    return str(year // YEAR_BUCKET_WIDTH * YEAR_BUCKET_WIDTH) if year > 0 else ""


def stable_bucket(token: str, buckets: int = TITLE_BUCKETS) -> int:
    """Deterministic hash bucket in 1..buckets-1 (CRC-32 of the UTF-8 bytes; never Python hash())."""
    return zlib.crc32(token.encode("utf-8")) % (buckets - 1) + 1


def hash_tokens(text: str, buckets: int = TITLE_BUCKETS, max_length: int = TITLE_MAX_LENGTH) -> list[int]:
    """The one text tokeniser (``text`` features at prepare time and in serving requests): the lower-cased
    word tokens (regex ``\\w+``) of ``text`` in order, the first ``max_length`` of them, each hashed to
    a bucket in 1..buckets-1 by :func:`stable_bucket`."""
    words = _TOKEN_RE.findall(str(text).lower())
    return [stable_bucket(w, buckets) for w in words[:max_length]]


def title_tokens(title: str, buckets: int = TITLE_BUCKETS,
                 max_length: int = TITLE_MAX_LENGTH) -> list[int]:
    """Hashed bag of the lower-cased word tokens of ``title`` without its year (:func:`hash_tokens` of
    :func:`strip_year`), in title order, truncated to ``max_length`` entries; each in 1..buckets-1."""
    return hash_tokens(strip_year(title), buckets, max_length)


def _sort_key(value: str) -> tuple:
    try:
        return (0, int(value), value)
    except ValueError:
        return (1, 0, value)


def build_vocab(values: Iterable[str]) -> list[str]:
    """Sorted distinct raw values (integer-like values numerically first, then the others as
    strings), empty string removed. Position p in the list has index p + 1 (0 = unknown)."""
    return sorted({str(v) for v in values if v is not None and str(v) != ""}, key=_sort_key)


def encode(values: Sequence[str], vocab: Sequence[str]) -> np.ndarray:
    """Indices of raw values in ``vocab`` (see :func:`build_vocab`); unknown or empty -> 0.
    Returns int32 array shape (len(values),)."""
    lookup = {v: i + 1 for i, v in enumerate(vocab)}
    return np.fromiter((lookup.get(str(v), 0) for v in values), dtype=np.int32, count=len(values))


def encode_lists(lists: Sequence[Sequence[str]], vocab: Sequence[str]) -> list[list[int]]:
    """Encode each list of raw values to sorted distinct indices, dropping unknown values."""
    lookup = {v: i + 1 for i, v in enumerate(vocab)}
    return [sorted({lookup[v] for v in vals if v in lookup}) for vals in lists]
