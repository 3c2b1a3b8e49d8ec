"""Unit tests: context features, title hashing, split helpers."""
from __future__ import annotations

import zlib
from datetime import datetime, timezone

import numpy as np
import pytest

from twotower.data import features as F
from twotower.data.split import TEST, TRAIN, VALID, leave_last_out, temporal_cuts, temporal_split, user_chunks

TOKS = [389, 823, 775]  # "shawshank", "redemption", "the"


def test_context_features_known_timestamps():
    ts = np.array([0, 1_700_000_000, 1_700_352_000], np.int64)
    ctx = F.context_features(ts)
    # 1970-01-01 00:00 Thursday; 2023-11-14 22:13:20 Tuesday; 2023-11-19 00:00 Sunday (UTC)
    assert ctx["day_of_week"].tolist() == [4, 2, 7]
    assert ctx["is_weekend"].tolist() == [0.0, 0.0, 1.0]
    for k in ("hour_sin", "hour_cos", "is_weekend"):
        assert ctx[k].dtype == np.float32
    assert ctx["day_of_week"].dtype == np.int32
    hour = 22 + 13 / 60 + 20 / 3600
    assert ctx["hour_sin"][1] == pytest.approx(np.sin(2 * np.pi * hour / 24), abs=1e-6)
    assert ctx["hour_cos"][1] == pytest.approx(np.cos(2 * np.pi * hour / 24), abs=1e-6)
    assert (ctx["hour_sin"][0], ctx["hour_cos"][0]) == (0.0, 1.0)
    for t in ts:
        d = datetime.fromtimestamp(int(t), timezone.utc)
        assert F.context_features(np.array([t]))["day_of_week"][0] == d.isoweekday()


def test_title_year_tokens_and_buckets():
    assert F.title_year("Toy Story (1995)") == 1995
    assert F.title_year("Babylon 5 (1994\u20131998)") == 1994
    assert F.title_year("Jungle2Jungle (a.k.a. Jungle 2 Jungle) (1997)") == 1997
    assert F.title_year("unknown") == 0
    assert F.strip_year("Shawshank Redemption, The (1994)") == "Shawshank Redemption, The"
    assert F.year_bucket_raw(1997) == "1995" and F.year_bucket_raw(0) == ""
    toks = F.title_tokens("Shawshank Redemption, The (1994)")
    assert toks == [F.stable_bucket(w) for w in ("shawshank", "redemption", "the")]
    assert toks == TOKS  # stable across runs and machines (CRC-32, not hash())
    assert F.stable_bucket("the") == zlib.crc32(b"the") % 1023 + 1
    assert all(1 <= t <= 1023 for t in toks)
    assert len(F.title_tokens(" ".join(["word"] * 40))) == 16
    assert F.age_bucket(np.array([7, 17, 18, 24, 25, 44, 45, 49, 50, 55, 56, 73])).tolist() == \
        [1, 1, 18, 18, 25, 35, 45, 45, 50, 50, 56, 56]
    vocab = F.build_vocab(["M", "F", "", "F"])
    assert vocab == ["F", "M"] and F.encode(["M", "x", ""], vocab).tolist() == [2, 0, 0]
    assert F.build_vocab(["10", "9", "b", "a"]) == ["9", "10", "a", "b"]


def test_split_helpers():
    user = np.array([1, 1, 1, 1, 2, 2, 3, 3, 3])
    assert leave_last_out(user).tolist() == [TRAIN, TRAIN, VALID, TEST, TRAIN, TRAIN,
                                             TRAIN, VALID, TEST]
    assert user_chunks(user, 5) == [(0, 4), (4, 9)]
    assert user_chunks(user, 2) == [(0, 4), (4, 6), (6, 9)]
    cuts = temporal_cuts(np.arange(100), 0.1, 0.2)
    assert cuts == (70, 80)
    assert np.bincount(temporal_split(np.arange(100), cuts)).tolist() == [70, 10, 20]
    with pytest.raises(ValueError):
        temporal_cuts(np.arange(10), 0.5, 0.5)
