"""Synthetic generator: layout, planted structure, streaming consistency."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from test_data_prepare import read_split
from twotower.data.sequences import read_events_metadata
from twotower.data.synthetic import BLOCK_USERS, prepare_synthetic
from twotower.data.tables import load_feature_tables
from twotower.model.schema import DatasetSchema

USERS, ITEMS, N = 2500, 400, 50_000


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "ds"
    prepare_synthetic(out, USERS, ITEMS, N, seed=3, history_length=20)
    return out


def table(root: Path, split: str) -> pd.DataFrame:
    """The examples of ``split`` (cut from the sequences), one row per interaction."""
    return read_split(root, split)


def test_layout_and_counts(syn):
    for name in ("schema.json", "stats.json", "users.parquet", "items.parquet",
                 "vocab/users.parquet", "vocab/items.parquet", "vocab/segment.parquet",
                 "vocab/category.parquet", "vocab/genres.parquet", "synthetic_truth_users.parquet",
                 "synthetic_truth_items.parquet", "sequences/part-00000.parquet"):
        assert (syn / name).is_file(), name
    schema = DatasetSchema.load(syn)
    assert (schema.num_users, schema.num_items, schema.history_length) == (USERS + 1, ITEMS + 1, 20)
    stats = json.loads((syn / "stats.json").read_text())
    assert sum(stats["rows"].values()) == N == stats["interactions"]
    assert stats["rows"]["valid"] == stats["rows"]["test"] == USERS  # everyone has >= 3 rows
    users, items = load_feature_tables(syn)
    assert users["segment"].shape == (USERS + 1,) and items["category"].shape == (ITEMS + 1,)
    assert items["genres"].shape[0] == ITEMS + 1 and (items["genres"][1:, 0] > 0).all()
    train = table(syn, "train")
    counts = np.bincount(train["item_idx"].to_numpy(), minlength=ITEMS + 1)
    assert np.array_equal(items["train_count"], counts)
    titles = pq.read_table(syn / "items.parquet")["title"].to_pylist()
    assert set(titles) == {""}


def test_planted_structure_is_measurable(syn):
    tu = pq.read_table(syn / "synthetic_truth_users.parquet")["cluster"].to_numpy()
    ti = pq.read_table(syn / "synthetic_truth_items.parquet").to_pandas()
    train = table(syn, "train")
    same = ti["cluster"].to_numpy()[train["item_idx"]] == tu[train["user_idx"]]
    n = np.bincount(train["user_idx"])
    per_user = (np.bincount(train["user_idx"], weights=same) / np.maximum(n, 1))[n > 0]
    assert per_user.mean() > 0.6 and np.median(per_user) > 0.6
    # time of day matters: item windows match the interaction's 6-hour window far above chance
    hour_window = (train["timestamp"].to_numpy() % 86400) // 21600
    match = (ti["window"].to_numpy()[train["item_idx"]] == hour_window).mean()
    assert match > 0.6
    users, items = load_feature_tables(syn)
    assert 0.7 < (users["segment"][1:] - 1 == tu[1:]).mean() < 0.9
    assert np.array_equal(items["category"][1:] - 1, ti["cluster"].to_numpy()[1:])
    # Zipf: the top 10% of items get far more than 10% of the interactions
    c = np.sort(items["train_count"][1:])[::-1]
    assert c[: ITEMS // 10].sum() > 0.25 * c.sum()


def test_sequences_history_and_seen(syn):
    train = table(syn, "train")
    assert (train.groupby("user_idx")["timestamp"].diff().dropna() > 0).all()
    hist = np.stack(train["history"].to_numpy())
    same_user = train["user_idx"].to_numpy()[1:] == train["user_idx"].to_numpy()[:-1]
    assert np.array_equal(hist[1:, 0][same_user], train["item_idx"].to_numpy()[:-1][same_user])
    assert (hist[1:, 0][~same_user] == 0).all() and hist[0, 0] == 0
    test = table(syn, "test")
    items_by_user = train.groupby("user_idx")["item_idx"].apply(set)
    valid = table(syn, "valid").set_index("user_idx")["item_idx"]
    for u, s in zip(test["user_idx"][:100], test["seen_items"][:100]):
        assert set(s) == items_by_user[u] | {valid[u]}


def test_streaming_chunk_size_does_not_change_data(syn, tmp_path):
    out = tmp_path / "small_chunks"
    stats = prepare_synthetic(out, USERS, ITEMS, N, seed=3, history_length=20, chunk_users=1,
                              rows_per_file=7_000)
    assert stats["rows"] == json.loads((syn / "stats.json").read_text())["rows"]
    files = sorted((out / "sequences").iterdir())                # one file per chunk: one block of users here
    events = [read_events_metadata(pq.read_schema(f).metadata) for f in files]
    assert len(files) == -(-USERS // BLOCK_USERS) > 1
    assert {s: sum(e[s] for e in events) for s in events[0]} == stats["rows"]
    one = pq.read_table(syn / "sequences")
    assert pa.concat_tables(pq.read_table(f) for f in files).equals(one)     # same rows, split over files
    for split in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(table(out, split), table(syn, split))
    a, b = load_feature_tables(out), load_feature_tables(syn)
    assert all(np.array_equal(a[1][k], b[1][k]) for k in b[1])


def test_temporal_split(tmp_path):
    stats = prepare_synthetic(tmp_path / "t", 500, 100, 10_000, seed=0, split="temporal",
                              history_length=5)
    t_valid, t_test = stats["temporal_cuts"]
    assert table(tmp_path / "t", "train")["timestamp"].to_numpy().max() < t_valid
    assert table(tmp_path / "t", "test")["timestamp"].to_numpy().min() >= t_test
    assert 0.05 < stats["rows"]["test"] / 10_000 < 0.15
