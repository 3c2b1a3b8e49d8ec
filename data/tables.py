"""User and item feature tables of a prepared dataset (local path or URI), as dense numpy arrays for the model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from twotower import storage
from twotower.model.batch import feature_column
from twotower.model.schema import DatasetSchema, Feature, SchemaError


def _feature_array(table: pa.Table, feat: Feature, path: str) -> np.ndarray:
    if feat.name not in table.column_names:
        raise SchemaError(f"{path}: no column {feat.name!r} for feature {feat.name!r}")
    col = table[feat.name]
    if feat.kind in ("categorical", "numeric", "bucketized"):
        return feature_column(feat, col.to_numpy())
    if feat.kind == "vector":
        values = pc.list_flatten(col.combine_chunks()).to_numpy(zero_copy_only=False)
        if len(values) != len(col) * feat.dim:
            raise SchemaError(f"{path}: vector column {feat.name!r} does not hold {feat.dim} values per row")
        return feature_column(feat, values.reshape(len(col), feat.dim))
    return feature_column(feat, col)


def _read(path: str, rows: int, index_col: str) -> pa.Table:
    fs, inner = storage.resolve(path)
    try:
        table = pq.read_table(inner, filesystem=fs)
    except FileNotFoundError as e:
        raise SchemaError(f"{path}: missing (not a prepared dataset?)") from e
    idx = table[index_col].to_numpy()
    if len(idx) != rows or not np.array_equal(idx, np.arange(rows)):
        raise SchemaError(f"{path}: expected {rows} rows with {index_col} == row number")
    return table


def load_feature_tables(dataset_dir: str | Path, schema: DatasetSchema | None = None
                        ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Load the user and item feature tables of a prepared dataset; row i is index i (row 0 =
    unknown user/item, all zeros). ``schema``: the dataset's schema when the caller has read it
    already (else ``schema.json`` is read).

    Returns:
        ``(user_table, item_table)``, dicts keyed by feature name (every user feature / item feature
        of ``schema.json``):

        * categorical -> int64, shape (num_users,) or (num_items,);
        * multi_hot / hashed_bag -> int64, shape (num_items, max_length) (or num_users), padded with 0;
        * numeric / bucketized -> float32 raw values, shape (num_rows,) (NaN = missing);
        * vector -> float32, shape (num_rows, dim);
        * ``item_table["train_count"]`` -> int64 (num_items,), train interactions per item.

    Raises:
        SchemaError: missing/invalid schema.json, users/items.parquet missing, a feature column missing, or row count/order of
            ``users.parquet``/``items.parquet`` not matching the schema.
    """
    schema = schema if schema is not None else DatasetSchema.load(dataset_dir)
    users_path, items_path = storage.join(dataset_dir, "users.parquet"), storage.join(dataset_dir, "items.parquet")
    users = _read(users_path, schema.num_users, "user_idx")
    items = _read(items_path, schema.num_items, "item_idx")
    user_table = {f.name: _feature_array(users, f, users_path) for f in schema.user_features}
    item_table = {f.name: _feature_array(items, f, items_path) for f in schema.item_features}
    item_table["train_count"] = items["train_count"].to_numpy().astype(np.int64)
    return user_table, item_table
