"""One index shard per searcher: index versions, the loaded versions of a shard, batched search.

An index directory (``twotower.index.manifest``) holds S shards; serving runs one searcher per shard.
:class:`ShardStore` opens shard ``s`` alone with ``ShardedIndex.load(index_dir, shards=[s])`` (every
check of the full loader: sha256 of its files, dimension, metric, counts, id map), so its ``search``
(exclusions, ties by ascending item_idx) is the per-shard half of ``ShardedIndex.search``, and
:func:`twotower.index.merge.merge_topk` in the fan-out (:mod:`twotower.serve.fanout`) the other half:
merging the per-shard top-k of all shards gives exactly the top-k of ``ShardedIndex.search`` over the
whole directory.

Index version: the first 12 hex digits of the sha256 of ``manifest.json`` (which lists the sha256 of
every file), so a rebuilt index is a new version even at the same path.
"""
from __future__ import annotations

import hashlib
import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from twotower import storage
from twotower.index.manifest import MANIFEST_NAME, IndexFormatError
from twotower.index.sharded import ShardedIndex

KEEP_VERSIONS = 2
log = logging.getLogger("twotower.serve")


def index_version(index_dir: str) -> str:
    """Version id of the index at ``index_dir``: sha256(manifest.json)[:12]. Raises IndexFormatError."""
    try:
        return hashlib.sha256(storage.read_bytes(storage.join(str(index_dir), MANIFEST_NAME))).hexdigest()[:12]
    except FileNotFoundError as e:
        raise IndexFormatError(f"{storage.join(str(index_dir), MANIFEST_NAME)}: missing") from e


@dataclass
class SearchRequest:
    """One query for one shard: ``query`` float32 (D,), ``k`` >= 1, ``exclude`` int64 item indices,
    ``version``: the index version to answer from (None = the newest loaded)."""

    query: np.ndarray
    k: int
    exclude: np.ndarray | None = None
    version: str | None = None


@dataclass
class SearchResult:
    """``scores`` float32 (k,), ``items`` int64 (k,) (-inf / -1 padded), best first, from index ``version``;
    ``versions``: every version the searcher holds, oldest first. ``error`` set (and arrays empty) when
    the requested version is not loaded or nothing is loaded."""

    version: str | None
    versions: tuple[str, ...]
    scores: np.ndarray
    items: np.ndarray
    error: str | None = None


class ShardStore:
    """The loaded versions of one shard (newest last, at most :data:`KEEP_VERSIONS`).

    Keeping the previous version lets a fan-out that sees shards mid-swap ask every shard for the same
    version (see :func:`twotower.serve.fanout.search_all`).
    """

    def __init__(self, shard: int):
        self.shard = shard
        self.versions: dict[str, ShardedIndex] = {}
        self.paths: dict[str, str] = {}
        self.last_error: str | None = None

    def open(self, index_dir: str, *, verify: bool = True, search_params: dict[str, int] | None = None,
             model_sha256: str | None = None) -> tuple[str, ShardedIndex | None]:
        """Read this shard of ``index_dir`` without installing it (safe in a worker thread while the store
        serves). Returns (version, shard index), the index None when that version is already loaded.

        Raises:
            IndexFormatError: see ``ShardedIndex.load`` (also: no such shard), or, when ``model_sha256`` (the
                serving checkpoint's) is given, an index not built from that checkpoint
                (``ShardedIndex.verify_checkpoint``).
        """
        version = index_version(index_dir)
        if version in self.versions:
            return version, None
        index = ShardedIndex.load(index_dir, shards=[self.shard], verify=verify, search_params=search_params)
        if model_sha256 is not None:
            index.verify_checkpoint(model_sha256)
        return version, index

    def install(self, version: str, index: ShardedIndex | None, index_dir: str) -> None:
        """Make ``version`` the newest (adding ``index`` when given), dropping versions beyond KEEP_VERSIONS."""
        index = index if index is not None else self.versions.get(version)
        if index is None:
            return
        self.versions.pop(version, None)
        self.versions[version] = index
        self.paths[version] = str(index_dir)
        while len(self.versions) > KEEP_VERSIONS:
            old = next(iter(self.versions))
            del self.versions[old]
            self.paths.pop(old, None)
        self.last_error = None

    def load(self, index_dir: str, **kwargs) -> str:
        """:meth:`open` then :meth:`install`; returns the version now answering."""
        version, index = self.open(index_dir, **kwargs)
        self.install(version, index, index_dir)
        return version

    def status(self) -> dict:
        """What ``GET /v1/model`` and ``/healthz`` report for this shard (JSON-serialisable)."""
        v = self.current
        out = {"shard": self.shard, "loaded": v is not None, "version": v, "loaded_versions": list(self.versions),
               "count": 0, "last_error": self.last_error, "index": None}
        if v is not None:
            m = self.versions[v].manifest
            out["count"] = m.num_items
            out["index"] = {"version": v, "path": self.paths.get(v), "dim": m.dim, "factory": m.factory,
                            "num_items": m.extra.get("index_num_items"), "num_shards": m.extra.get("index_num_shards"),
                            "search_params": dict(m.search_params), "created_at": m.created_at,
                            "checkpoint_sha256": m.checkpoint.get("model_sha256")}
        return out

    @property
    def current(self) -> str | None:
        return next(reversed(self.versions)) if self.versions else None

    def search_many(self, requests: Sequence[SearchRequest]) -> list[SearchResult]:
        """Answer a batch: requests are grouped by version and searched together with the largest k."""
        held = tuple(self.versions)
        out: list[SearchResult | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            v = r.version or self.current
            if v is None or v not in self.versions:
                why = "no index loaded" if v is None else f"index version {v} not loaded (holds {list(held)})"
                out[i] = SearchResult(v, held, np.zeros(0, np.float32), np.zeros(0, np.int64), why)
            else:
                groups.setdefault(v, []).append(i)
        for v, rows in groups.items():
            q = np.stack([np.asarray(requests[i].query, np.float32) for i in rows])
            k = max(int(requests[i].k) for i in rows)
            excl = [requests[i].exclude if requests[i].exclude is not None else () for i in rows]
            scores, items = self.versions[v].search(q, k, exclude=excl)
            for j, i in enumerate(rows):
                kk = int(requests[i].k)
                out[i] = SearchResult(v, held, scores[j, :kk], items[j, :kk])
        return out  # type: ignore[return-value]



async def reconfigure_store(store: ShardStore, config: dict | None, model_sha256: str | None,
                            lock: asyncio.Lock) -> str | None:
    """Load ``config["index_dir"]`` (``verify``, ``search_params``) into ``store`` in a thread while the loaded
    version keeps answering; returns the version now answering (None: no ``index_dir`` in ``config``).

    Raises:
        IndexFormatError / OSError: a first load that fails (a replica without an index must not start);
            a later failure keeps the old version and is reported as ``last_error`` (``GET /v1/model``).
    """
    index_dir = (config or {}).get("index_dir")
    if not index_dir:
        return None
    async with lock:
        try:
            version, index = await asyncio.to_thread(
                store.open, index_dir, verify=bool(config.get("verify", True)),
                search_params=config.get("search_params"), model_sha256=model_sha256)
        except Exception as e:
            store.last_error = f"{index_dir}: {e}"
            if not store.versions:
                raise
            log.error("shard %s: keeping index %s, could not load %s", store.shard, store.current, e)
            return store.current
        store.install(version, index, index_dir)
        log.info("shard %s: serving index %s from %s", store.shard, version, index_dir)
        return version
