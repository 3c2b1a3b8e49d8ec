"""Sequence rows and the examples cut from them, against a per-interaction reference written as loops."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twotower.data.features import CONTEXT_FEATURES
from twotower.data.sequences import (SEEN_COLUMN, build_sequence_rows, cut_examples, cut_windows, read_events_metadata,
                                     write_sequence_file)
from twotower.model.schema import DatasetSchema, Feature

N_HIST = 4


def _events(seed: int = 0, users: int = 7):
    """Random interactions sorted by (user, timestamp); split codes per user never decrease
    (temporal-like: some users have several valid/test rows)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 13, users)
    user = np.repeat(np.arange(1, users + 1), lengths)
    ts = np.concatenate([np.sort(rng.integers(0, 10**6, n)) for n in lengths])
    item = rng.integers(1, 9, len(user))                     # few items: repeats within a user
    split = np.concatenate([np.sort(rng.integers(0, 3, n)) for n in lengths]).astype(np.int8)
    price = rng.normal(size=len(user)).astype(np.float32)
    device = rng.integers(0, 4, len(user))
    tags = [list(rng.integers(1, 5, rng.integers(0, 3))) for _ in range(len(user))]
    return user, item, ts, split, {"price": price, "device": device, "tags": tags, "weight": rng.random(len(user))}


def _schema(window: int) -> DatasetSchema:
    ctx = CONTEXT_FEATURES + (Feature("price", "numeric"), Feature("device", "categorical", 4),
                              Feature("tags", "multi_hot", 5, max_length=2))
    return DatasetSchema(num_users=8, num_items=9, history_length=N_HIST, context_features=ctx,
                         weighted=True, sequence_window=window)


def _reference(user, item, ts, split, cols, code):
    """Loop per interaction: history = the N items before it (most recent first), seen = distinct
    items of the user with a lower split code."""
    out = []
    for r in range(len(user)):
        if split[r] != code:
            continue
        mine = np.flatnonzero(user == user[r])
        before = mine[mine < r]
        hist = [int(item[j]) for j in before[::-1][:N_HIST]]
        seen = sorted({int(item[j]) for j in mine if split[j] < code})
        out.append((int(user[r]), int(item[r]), int(ts[r]), hist + [0] * (N_HIST - len(hist)), seen,
                    float(cols["price"][r]), int(cols["device"][r]), sorted(cols["tags"][r])[:2]))
    return out


@pytest.mark.parametrize("window", [1, 3, 5, 1000])
@pytest.mark.parametrize("code", [0, 1, 2])
def test_examples_equal_the_per_interaction_reference(window, code):
    user, item, ts, split, cols = _events()
    schema = _schema(window)
    rows = build_sequence_rows(user, item, ts, split, schema, cols)
    ex = cut_examples(rows, code, schema, with_seen=code > 0)
    got = [(int(ex["user_idx"][i]), int(ex["item_idx"][i]), int(ex["timestamp"][i]), ex["history"][i].tolist(),
            ex[SEEN_COLUMN][i].tolist() if code > 0 else None, float(ex["price"][i]), int(ex["device"][i]),
            sorted(t for t in ex["tags"][i].tolist() if t)) for i in range(len(ex["item_idx"]))]
    ref = _reference(user, item, ts, split, cols, code)
    if code == 0:
        ref = [r[:4] + (None,) + r[5:] for r in ref]
    assert sorted(got) == sorted(ref)
    assert len(got) == int((split == code).sum())
    assert ex["history"].dtype == np.int64 and ex["history"].shape == (len(got), N_HIST)
    assert ex["weight"].dtype == np.float32


def test_windows_store_each_interaction_once_plus_the_prefix():
    user, item, ts, split, cols = _events(1, users=3)
    schema = _schema(window=3)
    rows = build_sequence_rows(user, item, ts, split, schema, cols)
    prefix = rows["prefix"].to_numpy()
    lengths = np.array([len(x) for x in rows["item_idx"].to_pylist()])
    assert (lengths - prefix).sum() == len(user)                # own entries: each interaction once
    assert (lengths - prefix).max() <= 3 and prefix.max() <= N_HIST
    own_start = rows["start"].to_numpy() + prefix              # position of the row's first own entry
    assert (own_start % 3 == 0).all() and (prefix == np.minimum(own_start, N_HIST)).all()
    first_rows = own_start == 0
    assert sorted(rows["user_idx"].to_numpy()[first_rows].tolist()) == [1, 2, 3]


def test_derived_time_features_come_from_the_timestamp():
    schema = _schema(1000)
    ts = np.array([0, 6 * 3600, 5 * 86_400 + 12 * 3600])        # Thu 00:00, Thu 06:00, Tue 12:00 (1970)
    rows = build_sequence_rows(np.array([1, 1, 1]), np.array([1, 2, 3]), ts, np.zeros(3, np.int8), schema,
                               {"price": np.zeros(3), "device": np.zeros(3, int), "tags": [[], [], []],
                                "weight": np.ones(3)})
    ex = cut_examples(rows, 0, schema)
    np.testing.assert_allclose(ex["hour_sin"], [0.0, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(ex["hour_cos"], [1.0, 0.0, -1.0], atol=1e-6)
    assert ex["day_of_week"].tolist() == [4, 4, 2] and ex["is_weekend"].tolist() == [0, 0, 0]


def test_sequence_file_footer_counts_own_interactions(tmp_path):
    user, item, ts, split, cols = _events(3)
    rows = build_sequence_rows(user, item, ts, split, _schema(window=2), cols)
    counts = write_sequence_file(rows, str(tmp_path / "part-00000.parquet"))
    expected = {s: int((split == c).sum()) for c, s in enumerate(("train", "valid", "test"))}
    assert counts == expected
    assert read_events_metadata(pq.read_schema(tmp_path / "part-00000.parquet").metadata) == expected
    assert read_events_metadata({}) is None


def test_cut_examples_on_a_slice_of_rows():
    user, item, ts, split, cols = _events(2)
    schema = _schema(4)
    rows = build_sequence_rows(user, item, ts, split, schema, cols)
    whole = cut_examples(rows, 1, schema, with_seen=True)
    parts = [cut_examples(rows.slice(a, 3), 1, schema, with_seen=True) for a in range(0, rows.num_rows, 3)]
    assert np.concatenate([p["item_idx"] for p in parts]).tolist() == whole["item_idx"].tolist()
    assert [s.tolist() for p in parts for s in p[SEEN_COLUMN]] == [s.tolist() for s in whole[SEEN_COLUMN]]
    rows2 = pa.Table.from_batches(rows.to_batches(max_chunksize=2))      # chunked columns
    assert cut_examples(rows2, 1, schema)["history"].tolist() == whole["history"].tolist()


def _window_reference(user, item, ts, split, cols, seq_window: int, length: int):
    """Loop per user: targets = train interactions after the user's first (grouped by the storage row
    that holds them), each paired with the interaction before it, in windows of ``length`` from the
    most recent backwards."""
    out = []
    for u in np.unique(user):
        mine = np.flatnonzero(user == u)
        targets = [k for k in range(1, len(mine)) if split[mine[k]] == 0]
        for row in sorted({k // seq_window for k in targets}):
            ks = [k for k in targets if k // seq_window == row]
            chunks = [ks[max(0, e - length):e] for e in range(len(ks), 0, -length)][::-1]
            for chunk in chunks:
                entries = [(int(item[mine[k - 1]]), int(item[mine[k]]), k, int(ts[mine[k - 1]]),
                            float(cols["price"][mine[k]]), int(cols["device"][mine[k]]),
                            round(float(cols["weight"][mine[k]]), 6)) for k in chunk]
                out.append((int(u), tuple(entries)))
    return out


@pytest.mark.parametrize("window", [1, 3, 5, 1000])
@pytest.mark.parametrize("length", [1, 2, 5, 50])
def test_windows_equal_the_per_user_reference(window, length):
    user, item, ts, split, cols = _events(2, users=9)
    schema = _schema(window)
    rows = build_sequence_rows(user, item, ts, split, schema, cols)
    w = cut_windows(rows, schema, length)
    got = []
    for i in range(len(w["user_idx"])):
        n = int(w["mask"][i].sum())
        assert w["mask"][i].tolist() == [True] * n + [False] * (length - n) and n > 0    # left-aligned
        assert (w["targets"][i][n:] == 0).all() and (w["items"][i][n:] == 0).all()
        got.append((int(w["user_idx"][i]), tuple(
            (int(w["items"][i, s]), int(w["targets"][i, s]), int(w["positions"][i, s]), int(w["timestamps"][i, s]),
             float(w["price"][i, s]), int(w["device"][i, s]), round(float(w["weight"][i, s]), 6)) for s in range(n))))
    assert got == _window_reference(user, item, ts, split, cols, window, length)      # same windows, same order
    hour = w["hour_sin"][w["mask"]]                  # context of the target event, derived from its timestamp
    target_ts = [ts[user == u][k] for u, entries in got for (_, _, k, *_rest) in entries]
    assert np.allclose(hour, np.sin(2 * np.pi * ((np.asarray(target_ts) % 86400) / 3600) / 24), atol=1e-5)
    assert w["tags"].shape == (len(got), length, 2) and w["items"].dtype == np.int64


def test_long_history_examples_see_the_whole_row_and_their_timestamps():
    user, item, ts, split, cols = _events(3, users=5)
    schema = _schema(1000)
    rows = build_sequence_rows(user, item, ts, split, schema, cols)
    ex = cut_examples(rows, 0, schema, history_length=12, history_time=True)
    for i in range(len(ex["item_idx"])):
        mine = np.flatnonzero(user == ex["user_idx"][i])
        k = int(np.flatnonzero((ts[mine] == ex["timestamp"][i]) & (item[mine] == ex["item_idx"][i]))[0])
        before = mine[:k][::-1][:12]
        assert ex["history"][i].tolist() == item[before].tolist() + [0] * (12 - len(before))
        assert ex["history_timestamp"][i].tolist() == ts[before].tolist() + [0] * (12 - len(before))
