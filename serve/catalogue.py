"""The item catalogue as serving needs it: raw id <-> index, titles, popularity order.

Read from a prepared dataset's ``items.parquet`` (row i = item index i, row 0 the unknown item):
``item_id`` (string), ``title`` (string, may be empty), ``train_count`` (int64).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from twotower import storage


class Catalogue:
    """Item ids, titles and popularity of a dataset's catalogue.

    Attributes:
        item_ids: object (num_items,) raw ids, ``""`` for index 0. titles: object (num_items,) or None
            when the dataset has no titles. train_count: int64 (num_items,).
        popular: int64 (num_items - 1,) known item indices by ``train_count`` desc, then index asc.
    """

    def __init__(self, item_ids: np.ndarray, titles: np.ndarray | None, train_count: np.ndarray):
        self.item_ids = np.asarray(item_ids, dtype=object)
        self.titles = None if titles is None else np.asarray(titles, dtype=object)
        self.train_count = np.asarray(train_count, dtype=np.int64)
        self.vocab = {str(r): i for i, r in enumerate(self.item_ids) if i > 0}
        known = np.arange(1, len(self.item_ids), dtype=np.int64)
        self.popular = known[np.lexsort((known, -self.train_count[1:]))]

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def load(cls, dataset_dir: str | Path) -> "Catalogue":
        """Read ``items.parquet`` (local or URI dataset). Raises FileNotFoundError when missing."""
        fs, path = storage.resolve(storage.join(dataset_dir, "items.parquet"))
        names = pq.read_schema(path, filesystem=fs).names
        cols = [c for c in ("item_idx", "item_id", "title", "train_count") if c in names]
        t = pq.read_table(path, columns=cols, filesystem=fs)
        order = np.argsort(t["item_idx"].to_numpy(), kind="stable")
        ids = np.asarray(t["item_id"].to_pylist(), dtype=object)[order]
        titles = None
        if "title" in names:
            titles = np.asarray(t["title"].to_pylist(), dtype=object)[order]
            if not any(titles[1:]):
                titles = None
        counts = t["train_count"].to_numpy()[order] if "train_count" in names else np.zeros(len(ids), np.int64)
        return cls(ids, titles, counts)

    def lookup(self, item_id: str) -> int:
        """Index of raw ``item_id``, 0 when unknown."""
        return int(self.vocab.get(str(item_id), 0))

    def lookup_many(self, item_ids: Iterable[object]) -> np.ndarray:
        """int64 indices of the known ones among raw ``item_ids`` (unknown ids dropped)."""
        idx = [self.vocab.get(str(i), 0) for i in item_ids]
        return np.asarray([i for i in idx if i > 0], dtype=np.int64)

    def split_known(self, item_ids: Iterable[object]) -> tuple[np.ndarray, list[str]]:
        """(int64 indices of the known ids among raw ``item_ids``, in their order, duplicates kept; the
        unknown ids as strings, in their order)."""
        keys = [str(i) for i in item_ids]
        idx = [self.vocab.get(k, 0) for k in keys]
        return (np.asarray([i for i in idx if i > 0], dtype=np.int64),
                [k for k, i in zip(keys, idx) if i == 0])

    def title(self, item_idx: int) -> str | None:
        if self.titles is None or not 0 < item_idx < len(self.titles):
            return None
        return self.titles[item_idx] or None

    def popularity_topk(self, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 (<=k,) = train counts, item_idx int64 (<=k,)) of the most popular items not in
        ``exclude``."""
        items = self.popular
        if exclude is not None and len(exclude):
            items = items[~np.isin(items, exclude)]
        items = items[:k]
        return self.train_count[items].astype(np.float32), items
