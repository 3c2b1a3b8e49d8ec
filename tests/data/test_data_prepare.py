"""MovieLens -> prepared dataset (through the one Ray Data job): counts, exact history/seen lists, splits,
context, atomicity."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from twotower.data.sequences import SEEN_COLUMN, SPLITS, cut_examples
from twotower.data.tables import load_feature_tables
from twotower.distributed.sources import prepare_movielens
from twotower.model.schema import DatasetSchema

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(300)]

DATA = Path(os.environ.get("TWOTOWER_DATA_DIR",
                           Path(__file__).resolve().parents[2].parent / "shared" / "data"))
ML100K = DATA / "ml-100k"
needs_ml100k = pytest.mark.skipif(not ML100K.is_dir(), reason=f"{ML100K} not available")


def read_split(root: Path, split: str) -> pd.DataFrame:
    """The examples of ``split`` cut from the sequences (history, seen_items for valid/test, context)."""
    code = SPLITS.index(split)
    ex = cut_examples(pq.read_table(root / "sequences"), code, DatasetSchema.load(root), with_seen=code > 0)
    return pd.DataFrame({k: list(v) if getattr(v, "ndim", 1) > 1 or k == SEEN_COLUMN else v for k, v in ex.items()})


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory) -> Path:
    if not ML100K.is_dir():
        pytest.fail(f"{ML100K} not available" + " (set TWOTOWER_DATA_DIR or place MovieLens under ../shared/data)")
    out = tmp_path_factory.mktemp("prep") / "ml-100k"
    prepare_movielens(out, "ml-100k", src=ML100K)
    return out


def write_tiny(src: Path) -> Path:
    """3 users; user 1 has a timestamp tie (rows 1 and 4 at t=300); item 50 is never rated."""
    src.mkdir(parents=True, exist_ok=True)
    rows = [(1, 10, 5, 100), (1, 20, 3, 300), (2, 10, 4, 50), (1, 30, 4, 200), (1, 40, 2, 300),
            (2, 20, 1, 60), (3, 30, 5, 10)]
    (src / "u.data").write_text("".join("\t".join(map(str, r)) + "\n" for r in rows))
    flags = "|".join(["0"] * 5 + ["1"] + ["0"] * 13)  # Comedy
    (src / "u.item").write_text("".join(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{flags}\n"
                                        for i in (10, 20, 30, 40, 50)))
    (src / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n"
                                "3|15|M|student|T8H1N\n4|30|F|writer|12345\n")
    return src


def test_tiny_exact_history_seen_and_counts(tmp_path):
    out = tmp_path / "out"
    stats = prepare_movielens(out, "ml-100k", src=write_tiny(tmp_path / "src"), history_length=3)
    assert stats["rows"] == {"train": 5, "valid": 1, "test": 1}
    schema = DatasetSchema.load(out)
    assert (schema.num_users, schema.num_items, schema.history_length) == (5, 6, 3)
    train = read_split(out, "train")
    assert train[["user_idx", "item_idx"]].values.tolist() == [[1, 1], [1, 3], [2, 1], [2, 2], [3, 3]]
    assert [list(h) for h in train["history"]] == [[0, 0, 0], [1, 0, 0], [0, 0, 0], [1, 0, 0],
                                                  [0, 0, 0]]
    valid, test = read_split(out, "valid"), read_split(out, "test")
    # tie at t=300: file order decides, so item 20 (row 1) is valid and item 40 (row 4) test
    assert valid[["user_idx", "item_idx", "timestamp"]].values.tolist() == [[1, 2, 300]]
    assert list(valid["history"][0]) == [3, 1, 0] and list(valid["seen_items"][0]) == [1, 3]
    assert test[["user_idx", "item_idx"]].values.tolist() == [[1, 4]]
    assert list(test["history"][0]) == [2, 3, 1] and list(test["seen_items"][0]) == [1, 2, 3]
    items = pq.read_table(out / "items.parquet").to_pandas()
    assert items["item_id"].tolist() == ["", "10", "20", "30", "40", "50"]
    assert items["train_count"].tolist() == [0, 2, 1, 2, 0, 0]
    assert list(items["genres"][0]) == [] and items["year_bucket"][0] == 0
    users = pq.read_table(out / "users.parquet").to_pandas()
    assert users["user_id"].tolist() == ["", "1", "2", "3", "4"]  # user 4 has no rating: known, no history
    age_vocab = pq.read_table(out / "vocab" / "age_bucket.parquet").to_pandas()
    assert age_vocab["raw"].tolist() == ["1", "18", "25", "50"] and age_vocab["idx"].tolist() == [1, 2, 3, 4]
    assert users["age_bucket"].tolist() == [0, 2, 4, 1, 3]
    assert pq.read_table(out / "vocab" / "zip_prefix.parquet")["raw"].to_pylist() == \
        ["123", "857", "940", "T8H"]
    # context of t=100: Thursday 1970-01-01 00:01:40 UTC
    row = train.iloc[0]
    assert row["day_of_week"] == 4 and row["is_weekend"] == 0.0
    assert row["hour_sin"] == pytest.approx(np.sin(2 * np.pi * 100 / 86400), abs=1e-6)
    assert row["hour_cos"] == pytest.approx(np.cos(2 * np.pi * 100 / 86400), abs=1e-6)


@needs_ml100k
def test_ml100k_counts_and_layout(ml100k):
    stats = json.loads((ml100k / "stats.json").read_text())
    assert stats["rows"] == {"train": 98114, "valid": 943, "test": 943}
    assert (stats["users"], stats["items"]) == (943, 1682)
    assert (stats["timestamp_min"], stats["timestamp_max"]) == (874724710, 893286638)
    schema = DatasetSchema.load(ml100k)
    assert (schema.num_users, schema.num_items, schema.name) == (944, 1683, "ml-100k")
    assert [f.name for f in schema.user_features] == ["gender", "age_bucket", "occupation",
                                                       "zip_prefix"]
    assert [f.name for f in schema.context_features] == ["hour_sin", "hour_cos", "day_of_week",
                                                          "is_weekend"]
    f = pq.ParquetFile(ml100k / "sequences" / "part-00000.parquet")
    assert f.schema_arrow.field("item_idx").type.value_type.bit_width == 32
    assert f.metadata.num_rows == 943                                   # one sequence row per user
    assert sum(len(x) for x in f.read(columns=["item_idx"])["item_idx"].to_pylist()) == 100_000
    users, items = load_feature_tables(ml100k)
    assert users["gender"].shape == (944,) and users["gender"].dtype == np.int64
    assert items["genres"].shape == (1683, 6) and items["title_tokens"].shape == (1683, 16)
    assert items["year_bucket"].shape == (1683,) and items["train_count"].sum() == 98114
    assert items["title_tokens"][0].sum() == 0 and users["zip_prefix"][0] == 0
    assert (items["title_tokens"][1:] < 1024).all() and (items["title_tokens"][1:, 0] > 0).all()
    genres = pq.read_table(ml100k / "vocab" / "genres.parquet").to_pandas()
    toy = items["genres"][1]  # Toy Story: Animation, Children's, Comedy
    assert sorted(genres.set_index("idx").loc[toy[toy > 0], "raw"]) == \
        ["Animation", "Children's", "Comedy"]


@needs_ml100k
def test_ml100k_history_matches_independent_computation(ml100k):
    raw = pd.read_csv(ML100K / "u.data", sep="\t", names=["u", "i", "r", "t"])
    raw["row"] = np.arange(len(raw))
    raw = raw.sort_values(["u", "t", "row"], kind="stable")
    expected, by_user = {}, {}
    for u, items in raw.groupby("u", sort=False)["i"]:
        seq = by_user[u] = items.tolist()
        for p, item in enumerate(seq):
            h = seq[max(0, p - 50):p][::-1]
            expected[u * 10_000 + item] = h + [0] * (50 - len(h))
    n_rows = 0
    test_item = dict(zip(*(read_split(ml100k, "test")[c] for c in ("user_idx", "item_idx"))))
    for split in ("train", "valid", "test"):
        t = read_split(ml100k, split)
        keys = t["user_idx"].to_numpy() * 10_000 + t["item_idx"].to_numpy()  # index == id here
        hist = np.stack(t["history"].to_list())
        want = np.array([expected[k] for k in keys])
        assert np.array_equal(hist, want)
        n_rows += len(keys)
        if split != "train":
            # leave-last-out: the user's other items, minus the test item for valid rows
            for u, i, s in zip(t["user_idx"], t["item_idx"], t[SEEN_COLUMN]):
                drop = {i} if split == "test" else {i, test_item[u]}
                assert s.tolist() == sorted(set(by_user[u]) - drop)
    assert n_rows == 100_000


@needs_ml100k
def test_temporal_split_and_min_rating(tmp_path):
    out = tmp_path / "temporal"
    stats = prepare_movielens(out, "ml-100k", src=ML100K, split="temporal", history_length=5)
    rows = stats["rows"]
    assert sum(rows.values()) == 100_000
    assert abs(rows["valid"] - 10_000) < 500 and abs(rows["test"] - 10_000) < 500
    t_valid, t_test = stats["temporal_cuts"]
    tr, va, te = (read_split(out, s) for s in ("train", "valid", "test"))
    assert tr["timestamp"].max() < t_valid <= va["timestamp"].min()
    assert va["timestamp"].max() < t_test <= te["timestamp"].min()
    train_items = tr.groupby("user_idx")["item_idx"].apply(set)
    for u, s in zip(va["user_idx"][:200], va["seen_items"][:200]):
        assert set(s) == train_items.get(u, set())
    out2 = tmp_path / "min4"
    stats = prepare_movielens(out2, "ml-100k", src=ML100K, min_rating=4, history_length=5)
    raw = pd.read_csv(ML100K / "u.data", sep="\t", names=["u", "i", "r", "t"])
    assert sum(stats["rows"].values()) == 55_375 == (raw.r >= 4).sum()
    assert stats["users_with_interactions"] == raw.loc[raw.r >= 4, "u"].nunique()
    assert stats["users"] == 943 and stats["items"] == 1682  # users and items files: every id is known
    kept = set(zip(raw.u[raw.r >= 4], raw.i[raw.r >= 4]))
    assert set(zip(read_split(out2, "train")["user_idx"], read_split(out2, "train")["item_idx"])) <= kept


def test_atomic_write_failure_and_overwrite(tmp_path, monkeypatch):
    src = write_tiny(tmp_path / "src")
    parent = tmp_path / "outs"
    parent.mkdir()

    def boom(*a, **k):
        raise RuntimeError("injected failure")

    with monkeypatch.context() as m:
        m.setattr("twotower.distributed.prepare.encode_entities", boom)    # after the sequences are written
        with pytest.raises(RuntimeError, match="injected"):
            prepare_movielens(parent / "ds", "ml-100k", src=src)
        assert list(parent.iterdir()) == []  # no output, no temp dir
        (parent / "ds").mkdir()
        (parent / "ds" / "marker").write_text("old")
        with pytest.raises(RuntimeError, match="injected"):
            prepare_movielens(parent / "ds", "ml-100k", src=src, overwrite=True)
        assert [p.name for p in parent.iterdir()] == ["ds"]
        assert (parent / "ds" / "marker").read_text() == "old"
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare_movielens(parent / "ds", "ml-100k", src=src)
    prepare_movielens(parent / "ds", "ml-100k", src=src, overwrite=True)
    assert [p.name for p in parent.iterdir()] == ["ds"]
    assert not (parent / "ds" / "marker").exists() and (parent / "ds" / "schema.json").exists()
    assert not (parent / "ds" / "_grouped").exists()


def test_ml10m_layout_without_users_file(tmp_path):
    src = tmp_path / "ml-10m"
    src.mkdir()
    (src / "ratings.dat").write_text("".join(f"{u}::{i}::4.5::{100 * u + i}\n"
                                             for u in (7, 9) for i in (1, 2, 3, 4)))
    (src / "movies.dat").write_text("1::A (1990)::Drama\n2::B (2001)::Comedy|Drama\n"
                                    "3::C (2002)::(no genres listed)\n4::D::Action\n5::E (1999)::X\n")
    out = tmp_path / "out"
    stats = prepare_movielens(out, "ml-10m", src=src, history_length=4)
    assert stats["rows"] == {"train": 4, "valid": 2, "test": 2}
    schema = DatasetSchema.load(out)
    assert schema.user_features == () and (schema.num_users, schema.num_items) == (3, 6)
    assert pq.read_table(out / "users.parquet").column_names == ["user_idx", "user_id"]
    assert stats["timestamp_min"] == 701 and stats["interactions"] == 8
    users, items = load_feature_tables(out)
    assert users == {} and items["genres"].shape == (6, 2)
    assert items["year_bucket"].tolist()[4] == 0  # "D" has no year
    test = read_split(out, "test")
    assert [list(h) for h in test["history"]] == [[3, 2, 1, 0], [3, 2, 1, 0]]
