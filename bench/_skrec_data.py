"""Input files of ``bench/_skrec_side.py`` from a twotower-prepared dataset (benchmarks only).

scikit-rec's datasets want USER_ID / ITEM_ID (str), OUTCOME (float) and numeric features; it does not
sample negatives for ContextualizedTwoTowerEstimator, so they are written here as OUTCOME 0 rows.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from twotower.data.splits import read_split_examples
from twotower.evaluation import iter_split_batches
from twotower.model.schema import DatasetSchema

CONTEXT = ["hour_sin", "hour_cos", "is_weekend"]        # + day-of-week one-hot


def _interactions(ds: Path, split: str, schema: DatasetSchema) -> pd.DataFrame:
    """user_idx, item_idx and the context columns of every example of ``split`` (cut from the sequences)."""
    ex = read_split_examples(ds, split, schema)
    return pd.DataFrame({c: ex[c] for c in ["user_idx", "item_idx", *CONTEXT, "day_of_week"]})


def _context(df: pd.DataFrame) -> pd.DataFrame:
    """hour_sin, hour_cos, is_weekend and dow_1..dow_7 (float32) of interaction rows."""
    out = df[CONTEXT].astype(np.float32).reset_index(drop=True)
    for d in range(1, 8):
        out[f"dow_{d}"] = (df["day_of_week"].to_numpy() == d).astype(np.float32)
    return out


def sample_negatives(users: np.ndarray, num_items: int, k: int, excluded: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """(R, k) item indices uniform over 1..num_items-1, none with ``user * num_items + item`` in ``excluded``."""
    neg = rng.integers(1, num_items, size=(len(users), k))
    codes = users[:, None].astype(np.int64) * num_items
    while True:
        bad = np.isin(codes + neg, excluded)
        if not bad.any():
            return neg
        neg[bad] = rng.integers(1, num_items, size=int(bad.sum()))


def _with_negatives(pos: pd.DataFrame, k: int, num_items: int, excluded: np.ndarray, rng, user_ids, item_ids):
    """Positives (OUTCOME 1) followed by k negatives per positive with its context (OUTCOME 0)."""
    users = pos["user_idx"].to_numpy()
    neg = sample_negatives(users, num_items, k, excluded, rng)
    ctx = _context(pos)
    frames = [pd.DataFrame({"USER_ID": user_ids[users], "ITEM_ID": item_ids[pos["item_idx"].to_numpy()],
                            "OUTCOME": np.float32(1.0)}).join(ctx)]
    for j in range(k):
        frames.append(pd.DataFrame({"USER_ID": user_ids[users], "ITEM_ID": item_ids[neg[:, j]],
                                    "OUTCOME": np.float32(0.0)}).join(ctx))
    return pd.concat(frames, ignore_index=True)


def _one_hot(values: pd.Series, prefix: str) -> pd.DataFrame:
    return pd.get_dummies(values, prefix=prefix, dtype=np.float32)


def write_skrec_inputs(ds: Path, work: Path, *, negatives: int, seed: int, config: dict) -> dict:
    """Write train/valid/users/items/eval parquet files and catalogue.json into ``work`` (replaced).

    Train negatives avoid the user's train items; valid negatives avoid the user's train and valid items.
    Eval rows are the test split in ``iter_split_batches`` order (the order twotower evaluates in).
    Returns row and feature counts.
    """
    schema = DatasetSchema.load(ds)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    users = pd.read_parquet(ds / "users.parquet").sort_values("user_idx")
    items = pd.read_parquet(ds / "items.parquet").sort_values("item_idx")
    user_ids = users["user_id"].astype(str).to_numpy()
    item_ids = items["item_id"].astype(str).to_numpy()
    n = schema.num_items
    rng = np.random.default_rng(seed)
    train, valid = _interactions(ds, "train", schema), _interactions(ds, "valid", schema)
    train_codes = np.unique(train["user_idx"].to_numpy(np.int64) * n + train["item_idx"].to_numpy())
    seen_codes = np.union1d(train_codes, valid["user_idx"].to_numpy(np.int64) * n + valid["item_idx"].to_numpy())
    train_df = _with_negatives(train, negatives, n, train_codes, rng, user_ids, item_ids)
    valid_df = _with_negatives(valid, negatives, n, seen_codes, rng, user_ids, item_ids)
    train_df.to_parquet(work / "train.parquet", index=False)
    valid_df.to_parquet(work / "valid.parquet", index=False)

    u = users[users["user_idx"] > 0]
    user_feats = pd.concat([_one_hot(u[c], c) for c in ("gender", "age_bucket", "occupation")], axis=1)
    pd.concat([pd.DataFrame({"USER_ID": u["user_id"].astype(str).to_numpy()}), user_feats.reset_index(drop=True)],
              axis=1).to_parquet(work / "users.parquet", index=False)
    it = items[items["item_idx"] > 0].reset_index(drop=True)
    genres = np.zeros((len(it), next(f.cardinality for f in schema.item_features if f.name == "genres")), dtype=np.float32)
    for r, g in enumerate(it["genres"]):
        genres[r, np.asarray(g, dtype=np.int64)] = 1.0
    genre_df = pd.DataFrame(genres[:, 1:], columns=[f"genre_{g}" for g in range(1, genres.shape[1])])
    pd.concat([pd.DataFrame({"ITEM_ID": it["item_id"].astype(str).to_numpy()}), genre_df,
               _one_hot(it["year_bucket"], "year").reset_index(drop=True)], axis=1).to_parquet(
        work / "items.parquet", index=False)

    rows = []
    for batch, _ in iter_split_batches(ds, "test", schema, 4096):
        rows.append(pd.DataFrame({"USER_ID": user_ids[batch["user_idx"]], **{c: batch[c] for c in CONTEXT},
                                  "day_of_week": batch["day_of_week"]}))
    test = pd.concat(rows, ignore_index=True)
    pd.concat([test[["USER_ID"]], _context(test)], axis=1).to_parquet(work / "eval.parquet", index=False)
    (work / "catalogue.json").write_text(json.dumps({"item_ids": item_ids[1:].tolist(), "config": config}))
    return {"train_rows": len(train_df), "valid_rows": len(valid_df), "eval_rows": len(test),
            "user_feature_cols": user_feats.shape[1], "item_feature_cols": genre_df.shape[1] + it["year_bucket"].nunique()}
