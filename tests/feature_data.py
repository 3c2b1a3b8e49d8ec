"""A tiny planted world with every feature kind in users, items and context, in memory or written as a
prepared dataset (format 2: ``users.parquet``, ``items.parquet``, ``vocab/``, ``sequences/``, ``schema.json``).

Planted structure: a user's cluster c in 0..3 is carried by two user features only (bit 0: the sign of
``u_vec[0]``, bit 1: ``u_num`` above its mean); a request's situation s in 0..1 by the stored context
``c_tags`` ({morning} or {evening}); the positive item is a random item of group g = s + 2 c, and the
group is carried by three item features (bit 0: ``i_genres`` {1} or {2}, bit 1: ``i_price`` bucket,
bit 2: a colour word in the ``i_title`` text). Every other feature is noise. The last ``COLD`` items
are never interacted with (``train_count`` 0).
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from twotower.data.features import CONTEXT_FEATURES, context_features, hash_tokens
from twotower.data.vocab import write_vocab
from twotower.data.writer import SequenceWriter
from twotower.model.schema import DatasetSchema, Feature

GROUP_SIZE, GROUPS, COLD = 8, 8, 2
NUM_ITEMS = 1 + GROUPS * GROUP_SIZE
ITEM_GROUP = np.r_[0, np.repeat(np.arange(GROUPS), GROUP_SIZE)]          # planted group of each item index
T0 = 880_000_000
WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "zeta"]
VOCABS = {"u_cat": ["a", "b", "c"], "u_tags": ["t1", "t2", "t3", "t4", "t5"], "i_genres": ["g1", "g2", "g3", "g4"],
          "i_cat": ["x", "y"], "c_device": ["ios", "android"], "c_tags": ["morning", "evening", "night"]}
USER = (Feature("u_cat", "categorical", cardinality=4), Feature("u_num", "numeric", mean=100.0, std=30.0),
        Feature("u_bucket", "bucketized", boundaries=(18.0, 30.0, 50.0)),
        Feature("u_tags", "multi_hot", cardinality=6, max_length=3),
        Feature("u_bio", "hashed_bag", cardinality=64, max_length=8), Feature("u_vec", "vector", dim=4))
ITEM = (Feature("i_genres", "multi_hot", cardinality=5, max_length=2),
        Feature("i_price", "bucketized", boundaries=(10.0, 20.0)),
        Feature("i_title", "hashed_bag", cardinality=128, max_length=6),
        Feature("i_year", "numeric", mean=2000.0, std=10.0), Feature("i_img", "vector", dim=3),
        Feature("i_cat", "categorical", cardinality=3))
CONTEXT = (Feature("c_device", "categorical", cardinality=3), Feature("c_temp", "numeric", mean=15.0, std=8.0),
           Feature("c_dist", "bucketized", boundaries=(1.0, 5.0)),
           Feature("c_tags", "multi_hot", cardinality=4, max_length=2)) + CONTEXT_FEATURES


def schema(num_users: int, weighted: bool = False) -> DatasetSchema:
    return DatasetSchema(num_users=num_users, num_items=NUM_ITEMS, history_length=4, user_features=USER,
                         item_features=ITEM, context_features=CONTEXT, name="features", weighted=weighted)


def users(cluster: np.ndarray, rng: np.random.Generator) -> dict[str, object]:
    """User feature columns (n rows) for clusters (n,): u_vec / u_num carry the cluster, the rest noise."""
    n = len(cluster)
    sign = np.where(cluster % 2 == 1, 1.0, -1.0)
    vec = rng.normal(0, 0.3, (n, 4)).astype(np.float32)
    vec[:, 0] += sign
    return {"u_cat": rng.integers(0, 4, n), "u_num": (100 + np.where(cluster >= 2, 30, -30) + rng.normal(0, 5, n)
                                                      ).astype(np.float32),
            "u_bucket": rng.uniform(10, 60, n).astype(np.float32),
            "u_tags": [sorted(set(rng.integers(1, 6, rng.integers(0, 4)).tolist())) for _ in range(n)],
            "u_bio": [hash_tokens(" ".join(rng.choice(WORDS, 3)), 64, 8) for _ in range(n)], "u_vec": vec}


def items(rng: np.random.Generator) -> dict[str, object]:
    """Item feature columns (NUM_ITEMS rows, row 0 zeros) and ``train_count`` (cold items 0), ``title``."""
    g = ITEM_GROUP
    titles = [""] + [f"{'red' if x >= 4 else 'blue'} {rng.choice(WORDS)}" for x in g[1:]]
    genres = [[]] + [sorted({1 + x % 2, int(rng.integers(3, 5))}) for x in g[1:]]
    price = np.where((g // 2) % 2 == 1, 25.0, 5.0).astype(np.float32)
    img = rng.normal(0, 1, (NUM_ITEMS, 3)).astype(np.float32)
    price[0], img[0] = np.nan, 0.0
    count = np.r_[0, np.full(NUM_ITEMS - 1 - COLD, 10), np.zeros(COLD, int)]
    return {"i_genres": genres, "i_price": price, "i_title": [hash_tokens(t, 128, 6) for t in titles],
            "i_year": rng.normal(2000, 10, NUM_ITEMS).astype(np.float32), "i_img": img,
            "i_cat": rng.integers(0, 3, NUM_ITEMS), "train_count": count, "title": titles, "group": g}


def examples(cluster: np.ndarray, item_group: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One positive per user row: item_idx (n,), timestamps and every context column (stored + derived)."""
    n = len(cluster)
    s = rng.integers(0, 2, n)
    warm = np.arange(1, NUM_ITEMS - COLD)                                    # cold items are never positives
    pool = [warm[item_group[warm] == x] for x in range(GROUPS)]
    item = np.array([rng.choice(pool[x]) for x in s + 2 * cluster])
    ts = T0 + rng.integers(0, 30 * 86_400, n)
    out = {"item_idx": item, "timestamp": ts, "c_device": rng.integers(1, 3, n),
           "c_temp": rng.normal(15, 8, n).astype(np.float32), "c_dist": rng.uniform(0, 8, n).astype(np.float32),
           "c_tags": [[1 + int(x)] for x in s]}
    return out | {k: v for k, v in context_features(ts).items()}


def cold_batch(n: int, rng: np.random.Generator, item_group: np.ndarray, sch: DatasetSchema) -> dict:
    """n model-input examples of fresh users (user_idx 0, their features as overrides, empty histories:
    only features tell the planted group), as tensors."""
    import torch

    from twotower.model.batch import feature_column, to_tensors

    cluster = rng.integers(0, 4, n)
    u = users(cluster, rng)
    raw = {"user_idx": np.zeros(n), "history": np.zeros((n, sch.history_length)), **examples(cluster, item_group, rng)}
    return to_tensors(raw, sch) | {f.name: torch.as_tensor(feature_column(f, u[f.name])) for f in sch.user_features}


def train(model, item_group: np.ndarray, steps: int, batch: int = 64, seed: int = 0):
    """``steps`` Adam steps (lr 0.01) of ``compute_loss`` on :func:`cold_batch` batches; returns the model."""
    from twotower.model.loss import compute_loss
    from twotower.model.optim import build_optimizer

    opt, rng = build_optimizer("adam", model, lr=1e-2), np.random.default_rng(seed)
    for _ in range(steps):
        loss = compute_loss(model, cold_batch(batch, rng, item_group, model.schema)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _column(f: Feature, values) -> pa.Array:
    if f.kind in ("multi_hot", "hashed_bag"):
        return pa.array([list(map(int, v)) for v in values], pa.list_(pa.int32()))
    if f.kind == "vector":
        return pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(values, np.float32).ravel()), f.dim)
    return pa.array(np.asarray(values).astype(np.float32 if f.kind in ("numeric", "bucketized") else np.int32))


def write_dataset(out, num_users: int = 40, per_user: int = 6, seed: int = 0) -> tuple[DatasetSchema, dict, dict]:
    """Write the planted world as a prepared dataset at ``out``; returns (schema, user table, item table)
    with the tables as numpy columns (what the model's buffers hold)."""
    from pathlib import Path

    out, rng, sch = Path(out), np.random.default_rng(seed), schema(num_users + 1)
    out.mkdir(parents=True, exist_ok=True)
    cluster = np.r_[0, rng.integers(0, 4, num_users)]
    u = users(cluster, rng)
    u["u_num"][0], u["u_bucket"][0], u["u_vec"][0], u["u_tags"][0], u["u_bio"][0], u["u_cat"][0] = (
        np.nan, np.nan, 0.0, [], [], 0)
    it = items(rng)
    rows = np.repeat(np.arange(1, num_users + 1), per_user)
    ex = examples(cluster[rows], it["group"], rng)
    order = np.lexsort((ex["timestamp"], rows))
    ex = {k: [v[i] for i in order] if isinstance(v, list) else v[order] for k, v in ex.items()}
    rows = rows[order]
    split = np.where(np.r_[rows[1:] != rows[:-1], True], 2, 0).astype(np.int8)       # each user's last: test
    writer = SequenceWriter(out, sch, NUM_ITEMS)
    stored = {f.name: ex[f.name] for f in sch.stored_context}
    writer.write(rows, ex["item_idx"], ex["timestamp"], split, stored)
    it["train_count"] = writer.train_count
    for name, raw in VOCABS.items():
        write_vocab(out, name, raw)
    write_vocab(out, "users", [f"u{i}" for i in range(1, num_users + 1)])
    write_vocab(out, "items", [f"i{i}" for i in range(1, NUM_ITEMS)])
    write_vocab(out, "day_of_week", ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"])
    pq.write_table(pa.table({"user_idx": pa.array(np.arange(num_users + 1, dtype=np.int32)),
                             "user_id": [""] + [f"u{i}" for i in range(1, num_users + 1)],
                             **{f.name: _column(f, u[f.name]) for f in USER}}), out / "users.parquet")
    pq.write_table(pa.table({"item_idx": pa.array(np.arange(NUM_ITEMS, dtype=np.int32)),
                             "item_id": [""] + [f"i{i}" for i in range(1, NUM_ITEMS)], "title": it["title"],
                             "train_count": pa.array(it["train_count"].astype(np.int64)),
                             **{f.name: _column(f, it[f.name]) for f in ITEM}}), out / "items.parquet")
    (out / "stats.json").write_text(json.dumps({"rows": writer.rows}))
    sch.save(out / "schema.json")
    return sch, {f.name: u[f.name] for f in USER}, {k: it[k] for k in [f.name for f in ITEM] + ["train_count"]}
