"""Loading an index directory (all of its shards, or some: one searcher per shard) and searching it with
the exact merge of :mod:`twotower.index.merge`."""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
import pyarrow.parquet as pq

from twotower import storage
from .build import apply_search_params, parse_factory
from .manifest import IndexFormatError, Manifest
from .merge import merge_topk

SMALL_BATCH = 20   # below this many queries FAISS searches single-threaded, so shards run in threads


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


class ShardedIndex:
    """S FAISS shards of one item catalogue, searched as one index (inner product, larger is better).

    Build with the ``twotower index`` job; open with :meth:`load`.

    Attributes:
        manifest: the checked :class:`Manifest`. path: where it was loaded from.
        dim / num_items / num_shards / factory / exact: shortcuts (``exact``: results equal brute force).
    """

    def __init__(self, manifest: Manifest, shards: list[faiss.Index], shard_item_idx: list[np.ndarray],
                 shard_item_id: list[np.ndarray], path: str = ""):
        self.manifest, self.path = manifest, path
        self._shards, self._idx, self._ids = shards, shard_item_idx, shard_item_id
        all_idx = np.concatenate(shard_item_idx) if shard_item_idx else np.zeros(0, np.int64)
        order = np.argsort(all_idx, kind="stable")
        self._sorted_idx = all_idx[order]
        self._sorted_id = np.concatenate(shard_item_id)[order] if shard_item_id else np.zeros(0, object)
        self._sorted_shard = np.repeat(np.arange(len(shards)), [len(i) for i in shard_item_idx])[order]
        self._pool: ThreadPoolExecutor | None = None

    dim = property(lambda self: self.manifest.dim)
    num_items = property(lambda self: self.manifest.num_items)
    num_shards = property(lambda self: len(self._shards))
    factory = property(lambda self: self.manifest.factory)
    exact = property(lambda self: parse_factory(self.manifest.factory).exact)

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify: bool = True, search_params: dict[str, int] | None = None,
             shards: Sequence[int] | None = None) -> "ShardedIndex":
        """Open the index directory ``path`` (local path or pyarrow filesystem URI).

        Args:
            verify: check the sha256 of every shard and id-map file against the manifest before parsing it
                (``manifest.verify_files(path)`` also checks the optional ``embeddings/``).
            search_params: override the stored ``nprobe`` / ``efSearch``.
            shards: load only these shard numbers (e.g. one searcher per shard); the returned index's
                manifest then lists only them (``num_items`` = their total) and its ``extra`` records the
                whole index's ``index_num_items`` and ``index_num_shards``.
        Raises:
            IndexFormatError: no/invalid manifest, unknown format version, a missing or corrupted shard
                or id-map file, a shard whose dimension, metric or vector count differs from the manifest,
                or an id map with the wrong columns or row count, or a shard number not in the manifest.
            The message names the file.
        """
        path = str(path)
        manifest = Manifest.read(path)
        if shards is not None:
            bad = [s for s in shards if not 0 <= s < manifest.num_shards]
            if bad:
                raise IndexFormatError(f"{path}: has {manifest.num_shards} shards, no shard {bad[0]}")
            chosen = [manifest.shards[s] for s in shards]
            whole = {"index_num_items": manifest.num_items, "index_num_shards": manifest.num_shards}
            manifest = dataclasses.replace(manifest, shards=chosen, num_items=sum(s.count for s in chosen),
                                           extra={**manifest.extra, **whole})
        params = {**manifest.search_params, **(search_params or {})}
        indexes, idx, ids = [], [], []
        tmp = None if not storage.is_uri(path) else tempfile.mkdtemp(prefix="twotower-index-")
        try:
            for s in manifest.shards:
                index_file = _fetch(path, s.index_file, tmp, manifest.files[s.index_file] if verify else None)
                ids_file = _fetch(path, s.ids_file, tmp, manifest.files[s.ids_file] if verify else None)
                index = _read_index(index_file, storage.join(path, s.index_file))
                where = storage.join(path, s.index_file)
                if index.d != manifest.dim:
                    raise IndexFormatError(f"{where}: dimension {index.d} does not match the manifest's "
                                           f"dim {manifest.dim}")
                if index.metric_type != faiss.METRIC_INNER_PRODUCT:
                    raise IndexFormatError(f"{where}: metric type {index.metric_type} is not inner product")
                if index.ntotal != s.count:
                    raise IndexFormatError(f"{where}: holds {index.ntotal} vectors, manifest says {s.count}")
                apply_search_params(index, params)
                item_idx, item_id = _read_ids(ids_file, storage.join(path, s.ids_file), s.count)
                indexes.append(index), idx.append(item_idx), ids.append(item_id)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        manifest.search_params = params
        return cls(manifest, indexes, idx, ids, path)

    def set_search_params(self, **params: int) -> None:
        """Change search parameters of every shard, e.g. ``set_search_params(nprobe=64)``."""
        for index in self._shards:
            apply_search_params(index, params)
        self.manifest.search_params = {**self.manifest.search_params, **params}

    def item_ids(self, item_idx: np.ndarray) -> np.ndarray:
        """Raw ``item_id`` strings (object array, same shape) of item indices; None for -1 / unknown ones."""
        item_idx = np.asarray(item_idx, dtype=np.int64)
        out = np.full(item_idx.shape, None, dtype=object)
        if not len(self._sorted_idx):
            return out
        pos = np.searchsorted(self._sorted_idx, item_idx).clip(0, len(self._sorted_idx) - 1)
        found = self._sorted_idx[pos] == item_idx
        out[found] = self._sorted_id[pos[found]]
        return out

    def search(self, queries, k: int, exclude: Sequence[Sequence[int]] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items of every query over all shards.

        Args:
            queries: (n, D) float32 array (or torch tensor), scored by inner product.
            k: results per query (>= 1).
            exclude: optional n sequences of item_idx to leave out of each query's results (e.g. seen
                items); each shard is asked for k + (excluded items in that shard) results, so k results
                come back whenever the catalogue has k non-excluded items.
        Returns:
            (scores (n, k) float32, item_idx (n, k) int64), best first. Ties in score are ordered by
            ascending item_idx; slots without a result (catalogue or probed lists too small) hold
            score -inf and item_idx -1. Exact types (``Flat``) return exactly the brute-force top-k.
        Raises:
            ValueError: queries not 2-D with D columns, k < 1, or ``exclude`` of the wrong length.
        """
        q = np.ascontiguousarray(_as_numpy(queries), dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {q.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        excl = None
        if exclude is not None:
            if len(exclude) != len(q):
                raise ValueError(f"exclude has {len(exclude)} entries for {len(q)} queries")
            excl = [np.asarray(e if e is not None else [], dtype=np.int64) for e in exclude]
        extra = self._excluded_per_shard(excl)
        parts = self._search_shards(q, [int(min(k + extra[s], self._shards[s].ntotal)) for s in range(self.num_shards)])
        scores = np.concatenate([p[0] for p in parts], axis=1)
        items = np.concatenate([p[1] for p in parts], axis=1)
        if excl is not None:
            for r, e in enumerate(excl):
                if len(e):
                    drop = np.isin(items[r], e)
                    scores[r, drop], items[r, drop] = -np.inf, -1
        return merge_topk([scores], [items], k)

    def _excluded_per_shard(self, excl: list[np.ndarray] | None) -> np.ndarray:
        """int64 (S,): the most excluded items of one query that shard s holds (its extra results to fetch)."""
        extra = np.zeros(self.num_shards, np.int64)
        for e in excl or ():
            if len(e) and len(self._sorted_idx):
                pos = np.searchsorted(self._sorted_idx, e).clip(0, len(self._sorted_idx) - 1)
                hit = self._sorted_idx[pos] == e
                extra = np.maximum(extra, np.bincount(self._sorted_shard[pos[hit]], minlength=self.num_shards))
        return extra

    def _search_shards(self, q: np.ndarray, ks: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per shard: (scores (n, ks[s]) float32, item_idx (n, ks[s]) int64), -inf/-1 where empty."""
        if self.num_shards > 1 and len(q) < SMALL_BATCH:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(min(self.num_shards, os.cpu_count() or 1))
            return list(self._pool.map(lambda s: self._search_one(s, q, ks[s]), range(self.num_shards)))
        return [self._search_one(s, q, ks[s]) for s in range(self.num_shards)]

    def _search_one(self, s: int, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of shard ``s`` with ties at the cut-off resolved by ascending item_idx: one extra result
        is fetched, and rows whose k-th and (k+1)-th scores tie are searched again, deeper, until the
        tie is exhausted (FAISS itself orders equal scores by position)."""
        index, n = self._shards[s], len(q)
        if k <= 0:
            return np.full((n, 0), -np.inf, np.float32), np.full((n, 0), -1, np.int64)
        fetch = min(k + 1, index.ntotal)
        dist, items = self._raw_search(s, q, fetch)
        out_d, out_i = dist[:, :k].copy(), items[:, :k].copy()
        rows = np.flatnonzero((dist[:, k - 1] == dist[:, k]) & (items[:, k] >= 0)) if fetch > k else []
        while len(rows):
            fetch = min(2 * fetch, index.ntotal)
            d2, i2 = self._raw_search(s, q[rows], fetch)
            out_d[rows], out_i[rows] = merge_topk([d2], [i2], k)
            more = (d2[:, -1] == out_d[rows, k - 1]) & (i2[:, -1] >= 0) & (fetch < index.ntotal)
            rows = rows[more]
        return out_d, out_i

    def _raw_search(self, s: int, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, pos = self._shards[s].search(q, k)
        valid = pos >= 0
        items = np.where(valid, self._idx[s][np.where(valid, pos, 0)], -1)
        return np.where(valid, dist, -np.inf).astype(np.float32), items

    def verify_checkpoint(self, model_sha256: str) -> None:
        """Raise IndexFormatError unless the index was built from the checkpoint whose model.pt has this
        sha256 (see :meth:`Manifest.verify_checkpoint`)."""
        self.manifest.verify_checkpoint(model_sha256, self.path)


def _fetch(directory: str, name: str, tmp: str | None, sha256: str | None) -> str:
    """Local path of ``directory/name`` (downloaded into ``tmp`` for URIs), checked against ``sha256``."""
    path = storage.join(directory, name)
    local = storage.resolve(path)[1] if tmp is None else os.path.join(tmp, name)
    try:
        if tmp is not None:
            storage.download(path, local)
        elif not os.path.isfile(local):
            raise FileNotFoundError(path)
    except FileNotFoundError as e:
        raise IndexFormatError(f"{path}: missing (listed in manifest.json)") from e
    if sha256 is not None:
        found = storage.sha256(local)
        if found != sha256:
            raise IndexFormatError(f"{path}: sha256 mismatch (expected {sha256[:16]}..., found {found[:16]}...): "
                                   f"file corrupted or modified")
    return local


def _read_index(local: str, where: str) -> faiss.Index:
    try:
        return faiss.read_index(local)
    except RuntimeError as e:
        raise IndexFormatError(f"{where}: not a readable FAISS index: {str(e).splitlines()[0]}") from e


def _read_ids(local: str, where: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        table = pq.read_table(local, columns=["item_idx", "item_id"])
    except Exception as e:   # pyarrow raises ArrowInvalid / KeyError-like errors for bad files or columns
        raise IndexFormatError(f"{where}: not a valid id map (item_idx, item_id): {e}") from e
    if table.num_rows != count:
        raise IndexFormatError(f"{where}: {table.num_rows} rows, manifest says {count}")
    return (table.column("item_idx").to_numpy().astype(np.int64),
            np.asarray(table.column("item_id").to_pylist(), dtype=object))
