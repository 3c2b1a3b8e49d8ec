"""MovieLens as a source of the one preparation path: GroupLens files -> raw tables + a dataset spec.

:func:`write_movielens_tables` converts a variant's files (layouts in :mod:`twotower.data.movielens`)
into parquet tables under ``dest`` and returns the :class:`~twotower.data.spec.DatasetSpec` that the
prepare job (:func:`twotower.distributed.prepare.prepare_dataset`) takes, like any team's own data:

* ``interactions/part-NNNNN.parquet``: ``user_id``, ``item_id``, ``rating``, ``timestamp`` (seconds), one
  file per 64 MiB block of the ratings file (never whole in memory); ``min_rating`` becomes the spec's
  filter ``rating >= min_rating`` (default: every rating is an implicit positive);
* ``users.parquet`` (ML-100K, ML-1M): ``user_id``, ``gender``, ``age_bucket`` (ML-1M age code; ML-100K ages
  bucketed to the same codes), ``occupation``, ``zip_prefix`` (first 3 characters) -- categorical;
* ``items.parquet``: ``item_id``, ``title``, ``genres`` (list, multi-hot), ``year_bucket`` (5-year bucket of
  the release year, categorical), ``title_text`` (the title without its year: the hashed-bag text feature
  ``title_tokens``, 1024 buckets, 16 tokens).
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from twotower import storage
from twotower.data import features as F
from twotower.data.movielens import LAYOUTS, VARIANTS, iter_rating_blocks, read_items, read_users, resolve
from twotower.data.spec import (ContextSpec, DatasetSpec, FeatureSpec, InteractionsSpec, SplitSpec, TableSpec)

USER_FEATURES = ("gender", "age_bucket", "occupation", "zip_prefix")


def _write(table: pa.Table, path: str) -> None:
    fs, inner = storage.resolve(path)
    pq.write_table(table, inner, filesystem=fs)


def write_movielens_tables(src: str | Path, variant: str, dest: str, *, min_rating: float | None = None,
                           history_length: int = 50, split: SplitSpec | None = None,
                           block_rows: int = 2_000_000) -> DatasetSpec:
    """Write ``variant``'s tables from the GroupLens files in local folder ``src`` to ``dest`` (local or URI)
    and return their spec (module docstring).

    Raises:
        ValueError: unknown variant. DataFormatError: a missing, empty or malformed file (names file, line).
    """
    if variant not in LAYOUTS:
        raise ValueError(f"unknown MovieLens variant {variant!r}; known: {', '.join(VARIANTS)}")
    lay = LAYOUTS[variant]
    storage.makedirs(storage.join(dest, "interactions"))
    for k, block in enumerate(iter_rating_blocks(resolve(src, lay.ratings), lay.sep, lay.header)):
        _write(block, storage.join(dest, "interactions", f"part-{k:05d}.parquet"))
    items = read_items(resolve(src, lay.items), variant)
    _write(pa.table({
        "item_id": pa.array(items["item_id"].to_numpy()),
        "title": pa.array(items["title"].tolist(), pa.string()),
        "genres": pa.array([list(g) for g in items["genres"]], pa.list_(pa.string())),
        "year_bucket": pa.array([F.year_bucket_raw(int(y)) or None for y in items["year"]], pa.string()),
        "title_text": pa.array([F.strip_year(t) for t in items["title"]], pa.string()),
    }), storage.join(dest, "items.parquet"))
    users = None
    if lay.users:
        frame = read_users(resolve(src, lay.users), variant)
        _write(pa.table({"user_id": pa.array(frame["user_id"].to_numpy()),
                         **{c: pa.array([str(v) for v in frame[c]], pa.string()) for c in USER_FEATURES}}),
               storage.join(dest, "users.parquet"))
        users = TableSpec(path=storage.join(dest, "users.parquet"), id="user_id",
                          features={c: FeatureSpec(kind="categorical") for c in USER_FEATURES})
    return DatasetSpec(
        name=variant,
        interactions=InteractionsSpec(path=storage.join(dest, "interactions"), format="parquet", user_id="user_id",
                                      item_id="item_id", timestamp="timestamp", timestamp_unit="seconds",
                                      filter=None if min_rating is None else f"rating >= {min_rating:g}"),
        context=ContextSpec(time_features=True),
        users=users,
        items=TableSpec(path=storage.join(dest, "items.parquet"), id="item_id", title="title", features={
            "genres": FeatureSpec(kind="multi_hot"),
            "year_bucket": FeatureSpec(kind="categorical"),
            "title_tokens": FeatureSpec(kind="text", column="title_text", buckets=F.TITLE_BUCKETS,
                                        max_length=F.TITLE_MAX_LENGTH)}),
        history_length=history_length, split=split or SplitSpec(), block_rows=block_rows)
