"""``twotower prepare table``: a team's own tables through a spec -- every feature kind, filter, weights,
deduplication, k-core, cold items; and each bad input named (file, column, row, value), nothing written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from shop_tables import write_shop
from twotower.data.errors import DataFormatError
from twotower.data.sequences import cut_examples
from twotower.data.spec import SpecError, load_spec
from twotower.distributed.sources import prepare_table
from twotower.model.schema import DatasetSchema

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shop")
    prepare_table(write_shop(root), root / "out")
    return root


def test_every_feature_kind_filter_weights_dedup_and_k_core(shop):
    out = shop / "out"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows"] == {"train": 4, "valid": 2, "test": 2}
    assert (stats["rows_read"], stats["rows_kept_by_filter"], stats["duplicates_removed"]) == (11, 10, 1)
    assert stats["k_core_rounds"] == 1 and stats["timestamp_unit"] == "milliseconds"
    schema = DatasetSchema.load(out)
    assert schema.weighted and (schema.num_users, schema.num_items) == (4, 6)   # c3 dropped (k-core), c4 known
    assert [(f.name, f.kind) for f in schema.user_features] == [("age", "bucketized"), ("segment", "categorical"),
                                                                ("ltv", "numeric")]
    assert [(f.name, f.kind) for f in schema.item_features] == [
        ("category", "categorical"), ("price", "numeric"), ("description", "hashed_bag"), ("image", "vector")]
    ctx = {f.name: f for f in schema.context_features}
    assert [f.name for f in schema.context_features if f.source == "timestamp"] == \
        ["hour_sin", "hour_cos", "day_of_week", "is_weekend"]
    assert ctx["price_seen"].mean == pytest.approx(17.5)                    # train values 10, 20, 15, 25
    assert ctx["price_seen"].std == pytest.approx(np.std([10, 20, 15, 25]))
    assert ctx["price_band"].boundaries == (20.0, 40.0) and ctx["price_band"].cardinality == 4
    assert (ctx["tags"].cardinality, ctx["tags"].max_length) == (3, 1)      # vocabulary: new, promo
    items = pq.read_table(out / "items.parquet")
    assert items["item_id"].to_pylist() == ["", "s1", "s2", "s3", "s4", "s5"]
    assert items["train_count"].to_pylist() == [0, 1, 2, 1, 0, 0]           # s5: cold item, in the catalogue
    assert items["title"].to_pylist()[1:3] == ["Red shoe", "Blue shirt"]
    assert items["image"].to_pylist()[5] == [16.0, 17.0, 18.0, 19.0] and items["image"].to_pylist()[0] == [0.0] * 4
    assert items.schema.field("image").type == pa.list_(pa.float32(), 4)
    assert [len(x) for x in items["description"].to_pylist()] == [0, 3, 4, 2, 2, 3]   # max_length 4 tokens
    users = pq.read_table(out / "users.parquet").to_pylist()
    assert [u["user_id"] for u in users] == ["", "c1", "c2", "c4"]
    assert users[3]["age"] == 61.0 and np.isnan(users[3]["ltv"]) and np.isnan(users[0]["age"])
    ex = cut_examples(pq.read_table(out / "sequences"), 0, schema)
    c1 = ex["user_idx"] == 1
    assert ex["item_idx"][c1].tolist() == [1, 2] and ex["weight"][c1].tolist() == [1.0, 2.0]
    assert ex["history"][c1].tolist() == [[0, 0, 0], [1, 0, 0]]
    assert ex["price_seen"][c1].tolist() == [10.0, 20.0] and ex["tags"][c1].tolist() == [[2], [0]]
    valid = cut_examples(pq.read_table(out / "sequences"), 1, schema, with_seen=True)
    assert valid["item_idx"].tolist() == [4, 4] and [s.tolist() for s in valid["seen_items"]] == [[1, 2], [2, 3]]


def _spec(shop: Path, tmp_path: Path, change) -> Path:
    """A copy of the shop's tables and spec with ``change(spec_dict, root)`` applied."""
    root = tmp_path / "in"
    shutil.copytree(shop, root, ignore=shutil.ignore_patterns("out"))
    spec = yaml.safe_load((root / "spec.yaml").read_text())
    change(spec, root)
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    return root / "spec.yaml"


def _fails(spec_path: Path, tmp_path: Path, error=DataFormatError) -> str:
    out = tmp_path / "out"
    with pytest.raises(error) as info:
        prepare_table(spec_path, out)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["in"]   # nothing written, no staging left
    return str(info.value)


def _events(root: Path, k: int = 1) -> pa.Table:
    return pq.read_table(root / "events" / f"part-{k}.parquet")


def _rewrite(root: Path, table: pa.Table, k: int = 1) -> None:
    pq.write_table(table, root / "events" / f"part-{k}.parquet")


def test_unknown_spec_key_suggests_the_nearest(shop, tmp_path):
    path = _spec(shop, tmp_path, lambda s, r: s["items"]["features"]["image"].update(dimm=4))
    with pytest.raises(SpecError, match=r"items\.features\.image\.dimm: unknown key \(did you mean 'dim'\?\)"):
        load_spec(path)
    path = _spec(shop, tmp_path / "b", lambda s, r: s.update(histroy_length=5))
    assert "histroy_length: unknown key (did you mean 'history_length'?)" in _fails(path, tmp_path / "b", SpecError)


def test_missing_file_and_missing_column(shop, tmp_path):
    path = _spec(shop, tmp_path, lambda s, r: s["items"].update(path="nowhere/*.parquet"))
    assert "nowhere/*.parquet: no file matches (items.path)" in _fails(path, tmp_path)
    path = _spec(shop, tmp_path / "b", lambda s, r: s["interactions"].update(item_id="product"))
    msg = _fails(path, tmp_path / "b")
    assert "events/part-0.parquet: no column 'product' (named by interactions.item_id)" in msg


def test_null_and_empty_ids(shop, tmp_path):
    def null_user(spec, root):
        t = _events(root)
        _rewrite(root, t.set_column(0, "customer_id", pa.array(["c2", None, "c2", "c2", "c3", "c1"])))
    msg = _fails(_spec(shop, tmp_path, null_user), tmp_path)
    assert "events/part-1.parquet row 2: column 'customer_id': null id" in msg

    def empty_item(spec, root):
        (root / "customers.csv").write_text("customer_id;age;segment;ltv\nc1;34;gold;1\n;19;silver;30\n")
    msg = _fails(_spec(shop, tmp_path / "b", empty_item), tmp_path / "b")
    assert "customers.csv line 3: column 'customer_id': null id" in msg


def test_duplicate_ids_in_an_items_table(shop, tmp_path):
    def dup(spec, root):
        t = pq.read_table(root / "products.parquet")
        pq.write_table(t.set_column(0, "sku", pa.array(["s1", "s2", "s3", "s2", "s5"])), root / "products.parquet")
    msg = _fails(_spec(shop, tmp_path, dup), tmp_path)
    assert "products.parquet row 4: column 'sku': duplicate id 's2' (also at" in msg and "row 2" in msg


def test_vector_of_the_wrong_length(shop, tmp_path):
    path = _spec(shop, tmp_path, lambda s, r: s["items"]["features"]["image"].update(dim=5))
    assert "products.parquet row 1: column 'image': has 4 values, expected dim 5" in _fails(path, tmp_path)


def test_non_numeric_value_in_a_numeric_column(shop, tmp_path):
    def text_ltv(spec, root):
        (root / "customers.csv").write_text("customer_id;age;segment;ltv\nc1;34;gold;1\nc2;19;silver;lots\n")
    assert "customers.csv line 3: column 'ltv': non-numeric value 'lots'" in _fails(_spec(shop, tmp_path, text_ltv),
                                                                                    tmp_path)

    def text_price(spec, root):                      # raised inside a Ray task, reaches the caller as itself
        t = _events(root)
        _rewrite(root, t.set_column(4, "price_seen", pa.array(["1", "2", "x9", "4", "5", "6"])))
    msg = _fails(_spec(shop, tmp_path / "b", text_price), tmp_path / "b")
    assert "events/part-1.parquet row 3: column 'price_seen': non-numeric value 'x9'" in msg


def test_timestamps_out_of_range_and_of_the_wrong_type(shop, tmp_path):
    def far_future(spec, root):
        t = _events(root)
        ts = t["ts"].to_numpy().copy()
        ts[4] = 10**18                                                       # ms: year ~ 31.7 million
        _rewrite(root, t.set_column(2, "ts", pa.array(ts)))
    msg = _fails(_spec(shop, tmp_path, far_future), tmp_path)
    assert "events/part-1.parquet row 5: column 'ts': timestamp 1000000000000000000 is out of range" in msg

    def text_ts(spec, root):
        t = _events(root)
        _rewrite(root, t.set_column(2, "ts", pa.array(["2023-11-14"] * t.num_rows)))
    msg = _fails(_spec(shop, tmp_path / "b", text_ts), tmp_path / "b")
    assert "events/part-1.parquet row 1: column 'ts': non-numeric value '2023-11-14'" in msg


def test_bad_filter_is_a_spec_error(shop, tmp_path):
    path = _spec(shop, tmp_path, lambda s, r: s["interactions"].update(filter="kind == 'buy'"))
    assert "interactions.filter: unknown column 'kind'" in _fails(path, tmp_path, SpecError)
