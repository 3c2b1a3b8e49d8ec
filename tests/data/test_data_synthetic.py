"""Synthetic generator (a source of the Ray Data prepare job): layout, planted structure, chunking."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twotower.data.sequences import SEEN_COLUMN, SPLITS, cut_examples
from twotower.data.tables import load_feature_tables
from twotower.distributed.sources import prepare_synthetic
from twotower.model.schema import DatasetSchema

USERS, ITEMS, N = 2500, 400, 50_000
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "ds"
    prepare_synthetic(out, USERS, ITEMS, N, seed=3, history_length=20)
    return out


def table(root: Path, split: str) -> pa.Table:
    """The examples of ``split`` (seen_items on valid/test) as a table."""
    code = SPLITS.index(split)
    ex = cut_examples(pq.read_table(root / "sequences"), code, DatasetSchema.load(root), with_seen=code > 0)
    cols = {k: (pa.array([list(x) for x in v]) if getattr(v, "ndim", 1) > 1 or k == SEEN_COLUMN else v)
            for k, v in ex.items()}
    return pa.table(cols)


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
    train = table(syn, "train").to_pandas()
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
    train = table(syn, "train").to_pandas()
    assert (train.groupby("user_idx")["timestamp"].diff().dropna() > 0).all()
    hist = np.stack(train["history"].to_numpy())
    same_user = train["user_idx"].to_numpy()[1:] == train["user_idx"].to_numpy()[:-1]
    assert np.array_equal(hist[1:, 0][same_user], train["item_idx"].to_numpy()[:-1][same_user])
    assert (hist[1:, 0][~same_user] == 0).all() and hist[0, 0] == 0
    test = table(syn, "test").to_pandas()
    items_by_user = train.groupby("user_idx")["item_idx"].apply(set)
    valid = table(syn, "valid").to_pandas().set_index("user_idx")["item_idx"]
    for u, s in zip(test["user_idx"][:100], test["seen_items"][:100]):
        assert set(s) == items_by_user[u] | {valid[u]}


def test_chunks_and_partitions_do_not_change_data(syn, tmp_path):
    out = tmp_path / "small_chunks"
    stats = prepare_synthetic(out, USERS, ITEMS, N, seed=3, history_length=20, chunk_users=1, block_rows=7_000)
    assert stats["rows"] == json.loads((syn / "stats.json").read_text())["rows"]
    assert stats["partitions"] == -(-N // 7_000) and len(stats["files"]) == stats["partitions"]
    assert stats["interaction_files"] == -(-USERS // 1024)          # one raw file per 1024-user block
    for split in ("train", "valid", "test"):
        a, b = table(out, split), table(syn, split)
        order = lambda t: np.lexsort((t["timestamp"].to_numpy(), t["user_idx"].to_numpy()))  # noqa: E731
        assert a.take(order(a)).equals(b.take(order(b))), split
    a, b = load_feature_tables(out), load_feature_tables(syn)
    assert all(np.array_equal(a[1][k], b[1][k]) for k in b[1])


def test_temporal_split(tmp_path):
    stats = prepare_synthetic(tmp_path / "t", 500, 100, 10_000, seed=0, split="temporal",
                              history_length=5)
    t_valid, t_test = stats["temporal_cuts"]
    assert table(tmp_path / "t", "train")["timestamp"].to_numpy().max() < t_valid
    assert table(tmp_path / "t", "test")["timestamp"].to_numpy().min() >= t_test
    assert 0.05 < stats["rows"]["test"] / 10_000 < 0.15


@pytest.mark.parametrize("successor", [0.0, 0.7])
def test_planted_successor_chains(tmp_path, successor):
    """With ``successor`` = s, a share s of transitions (beyond chance) goes to each item's fixed successor:
    the modal next item of every item takes about s + (1 - s) * chance of its transitions."""
    from twotower.data.synthetic import write_synthetic_tables

    write_synthetic_tables(str(tmp_path), users=400, items=100, interactions=20_000, seed=3, successor=successor)
    t = pq.read_table(tmp_path / "interactions").sort_by([("user_id", "ascending"), ("timestamp", "ascending")])
    user, item = t["user_id"].to_numpy(), t["item_id"].to_numpy()
    same = user[1:] == user[:-1]
    prev, nxt = item[:-1][same], item[1:][same]
    pairs = np.unique(prev * 1000 + nxt, return_counts=True)
    modal = {}
    for key, count in zip(*pairs):
        modal[key // 1000] = max(modal.get(key // 1000, 0), count)
    share = sum(modal.values()) / len(prev)
    assert (share > 0.65) if successor else (share < 0.3)
    with pytest.raises(ValueError, match="successor must be in"):
        write_synthetic_tables(str(tmp_path / "bad"), users=10, items=10, interactions=100, successor=1.0)
