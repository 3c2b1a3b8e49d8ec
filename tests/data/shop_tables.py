"""A small e-commerce layout for the spec tests: events (parquet, two files, millisecond timestamps),
products (parquet, with a vector column) and customers (CSV), plus the spec that declares them."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

T0 = 1_700_000_000_000           # ms


def events() -> list[dict]:
    """c1: 5 events (one duplicate, one 'view' dropped by the filter); c2: 4; c3: 1 (dropped by k-core: 2)."""
    rows = [("c1", "s1", 0, "web", 10.0, ["promo"], "buy", 1.0), ("c1", "s2", 1, "app", 20.0, [], "buy", 2.0),
            ("c1", "s2", 1, "app", 20.0, [], "buy", 2.0),                 # duplicate (user, item, ts)
            ("c1", "s3", 2, "web", None, ["promo", "new"], "view", 1.0),  # filtered out
            ("c1", "s4", 3, "app", 40.0, ["new"], "buy", 1.0), ("c1", "s1", 4, "web", 50.0, [], "buy", 0.5),
            ("c2", "s2", 0, "app", 15.0, [], "buy", 1.0), ("c2", "s3", 5, "tv", 25.0, ["new"], "buy", 1.0),
            ("c2", "s4", 6, "web", 35.0, [], "buy", 1.0), ("c2", "s1", 7, "app", 45.0, [], "buy", 1.0),
            ("c3", "s9", 0, "web", 5.0, [], "buy", 1.0)]
    keys = ("customer_id", "sku", "ts", "device", "price_seen", "tags", "event", "w")
    return [dict(zip(keys, r)) | {"ts": T0 + r[2] * 3_600_000} for r in rows]


def write_shop(root: Path) -> Path:
    """Write the tables and ``spec.yaml`` under ``root``; returns the spec path."""
    (root / "events").mkdir(parents=True, exist_ok=True)
    ev = events()
    schema = pa.schema([("customer_id", pa.string()), ("sku", pa.string()), ("ts", pa.int64()),
                        ("device", pa.string()), ("price_seen", pa.float64()), ("tags", pa.list_(pa.string())),
                        ("event", pa.string()), ("w", pa.float32())])
    pq.write_table(pa.Table.from_pylist(ev[:5], schema), root / "events" / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(ev[5:], schema), root / "events" / "part-1.parquet")
    products = pa.table({
        "sku": ["s1", "s2", "s3", "s4", "s5"],                                 # s5: never bought (cold item)
        "name": ["Red shoe", "Blue shirt", "Green hat", "Red hat", "Gold ring"],
        "category": ["shoes", "shirts", "hats", "hats", "jewels"],
        "price": [50.0, 20.0, 10.0, 12.0, 500.0],
        "description": ["a red shoe", "a blue shirt for summer", "green hat", "red hat", "ring of gold"],
        "image": pa.FixedSizeListArray.from_arrays(pa.array([float(i) for i in range(20)], pa.float32()), 4),
    })
    pq.write_table(products, root / "products.parquet")
    (root / "customers.csv").write_text("customer_id;age;segment;ltv\nc1;34;gold;120.5\nc2;19;silver;30\n"
                                        "c4;61;gold;\n")
    spec = {
        "name": "shop",
        "interactions": {"path": "events/", "user_id": "customer_id", "item_id": "sku", "timestamp": "ts",
                         "weight": "w", "filter": "event != 'view'", "min_user_interactions": 2},
        "context": {"time_features": True, "features": {
            "device": {"kind": "categorical"}, "price_seen": {"kind": "numeric"},
            "price_band": {"kind": "bucketized", "column": "price_seen", "boundaries": [20, 40]},
            "tags": {"kind": "multi_hot"}}},
        "users": {"path": "customers.csv", "csv": {"delimiter": ";"}, "id": "customer_id", "features": {
            "age": {"kind": "bucketized", "boundaries": [25, 50]}, "segment": {"kind": "categorical"},
            "ltv": {"kind": "numeric"}}},
        "items": {"path": "products.parquet", "id": "sku", "title": "name", "features": {
            "category": {"kind": "categorical"}, "price": {"kind": "numeric"},
            "description": {"kind": "text", "max_length": 4, "buckets": 64},
            "image": {"kind": "vector", "dim": 4}}},
        "history_length": 3,
    }
    (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root / "spec.yaml"
