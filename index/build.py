"""Building one FAISS shard: shard assignment, factory strings, training on a sample, writing files.

Supported factory strings (metric is always inner product): ``Flat`` (exact), ``IVF{nlist},Flat``,
``IVF{nlist},PQ{m}`` (m sub-quantizers of 8 bits, m must divide D), ``HNSW{M}``; any other string
FAISS's ``index_factory`` accepts is passed through unchecked. Default search parameters:
``nprobe = min(nlist, max(8, nlist // 8))`` and ``efSearch = 128``. PQ indexes are built without
FAISS's polysemous training (it only serves Hamming pre-filtering, which this search does not use,
and costs minutes on small shards).
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from twotower import storage
from .manifest import ShardInfo

DEFAULT_EF_SEARCH = 128
DEFAULT_EF_CONSTRUCTION = 40
TRAIN_POINTS_PER_LIST = 64
MIN_TRAIN_POINTS = 10_000
Batches = Callable[[], Iterable[tuple[np.ndarray, np.ndarray, Sequence[str]]]]


class IndexBuildError(ValueError):
    """A factory string or shard that cannot be built (e.g. fewer vectors than IVF lists)."""


@dataclass(frozen=True)
class FactoryInfo:
    """What :func:`parse_factory` understood of a factory string (0 = not present)."""

    factory: str
    nlist: int = 0
    pq_m: int = 0
    hnsw_m: int = 0

    @property
    def exact(self) -> bool:
        """True for exhaustive exact search (``Flat``): results equal brute force."""
        return self.factory.replace(" ", "") in ("Flat", "IDMap,Flat")


def parse_factory(factory: str, dim: int | None = None) -> FactoryInfo:
    """Parse ``factory``; check it against ``dim`` when given.

    Raises:
        IndexBuildError: empty string, or a PQ m that does not divide ``dim``.
    """
    f = factory.replace(" ", "")
    if not f:
        raise IndexBuildError("empty FAISS factory string")
    ivf, pq_, hnsw = re.search(r"IVF(\d+)", f), re.search(r"PQ(\d+)", f), re.match(r"HNSW(\d+)", f)
    info = FactoryInfo(f, int(ivf.group(1)) if ivf else 0, int(pq_.group(1)) if pq_ else 0,
                       int(hnsw.group(1)) if hnsw else 0)
    if dim is not None and info.pq_m and dim % info.pq_m:
        raise IndexBuildError(f"factory {factory!r}: PQ{info.pq_m} needs a dimension divisible by "
                              f"{info.pq_m}, embeddings have dim {dim}")
    return info


def default_search_params(factory: str, nprobe: int | None = None, ef_search: int | None = None) -> dict[str, int]:
    """Search parameters stored in the manifest: ``nprobe`` for IVF, ``efSearch`` for HNSW (given or default)."""
    info = parse_factory(factory)
    out: dict[str, int] = {}
    if info.nlist:
        out["nprobe"] = int(nprobe) if nprobe else min(info.nlist, max(8, info.nlist // 8))
    if "HNSW" in info.factory:
        out["efSearch"] = int(ef_search) if ef_search else DEFAULT_EF_SEARCH
    return out


def apply_search_params(index: faiss.Index, params: dict[str, int]) -> None:
    """Set ``nprobe`` / ``efSearch`` on ``index`` (works through FAISS wrappers)."""
    ps = faiss.ParameterSpace()
    for name, value in params.items():
        ps.set_index_parameter(index, name, int(value))


def shard_of(item_ids: Sequence[str], num_shards: int) -> np.ndarray:
    """Shard (int32 (n,)) of each raw item id: blake2b-64 of its UTF-8 bytes, big-endian, mod ``num_shards``."""
    if num_shards == 1:
        return np.zeros(len(item_ids), dtype=np.int32)
    h = np.fromiter((int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "big") % num_shards
                     for i in item_ids), dtype=np.int64, count=len(item_ids))
    return h.astype(np.int32)


def train_size(info: FactoryInfo, n: int) -> int:
    """Vectors used to train IVF/PQ: ``max(64 * nlist, 10000)`` capped at ``n``; 0 when no training is needed."""
    if not info.nlist and not info.pq_m:
        return 0
    return min(n, max(TRAIN_POINTS_PER_LIST * info.nlist, MIN_TRAIN_POINTS))


def build_index(dim: int, factory: str, batches: Batches, n: int, *, search_params: dict[str, int] | None = None,
                seed: int = 0, ef_construction: int = DEFAULT_EF_CONSTRUCTION,
                max_train: int | None = None) -> tuple[faiss.Index, np.ndarray, list[str]]:
    """Build one shard from a re-iterable stream of batches, never holding more than the index, the id
    map, the training sample and one batch.

    Args:
        dim: D. factory: FAISS factory string. n: total vectors the stream yields.
        batches: ``batches()`` returns a fresh iterator of ``(item_idx int64 (b,), embeddings float32 (b, D),
            item_id strings (b,))``; called twice for trained types (sample, then add), once otherwise.
        search_params: applied before returning (stored in the FAISS file too).
        seed: seeds the training sample and FAISS k-means. max_train: override :func:`train_size`.
    Returns:
        (index with n vectors at positions 0..n-1, item_idx (n,) int64, item_id list) in stream order.
    Raises:
        IndexBuildError: n < nlist, PQ m not dividing D, a batch of the wrong dimension, a stream
            yielding a different number of vectors than ``n``, or an item_idx occurring twice.
    """
    info = parse_factory(factory, dim)
    if info.nlist and n < info.nlist:
        raise IndexBuildError(f"factory {factory!r}: a shard has {n} vectors, fewer than nlist={info.nlist}; "
                              f"use fewer IVF lists or fewer shards")
    index = faiss.index_factory(dim, info.factory, faiss.METRIC_INNER_PRODUCT)
    if info.hnsw_m:
        faiss.downcast_index(index).hnsw.efConstruction = ef_construction
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
    inner = faiss.downcast_index(ivf if ivf is not None else index)
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False     # Hamming-filter training: slow, and unused by our search
    if not index.is_trained:
        want = max_train or train_size(info, n)
        rng = np.random.default_rng(seed)
        sample = [emb[rng.random(len(emb)) < want / max(n, 1)] for _, emb, _ in _checked(batches(), dim)]
        x = np.ascontiguousarray(np.concatenate(sample) if sample else np.zeros((0, dim), np.float32))
        if len(x) < max(info.nlist, 1):
            x = np.concatenate([emb for _, emb, _ in _checked(batches(), dim)])[:want]
        index.train(x)
    ids, names = [], []
    for idx, emb, item_id in _checked(batches(), dim):
        index.add(np.ascontiguousarray(emb, dtype=np.float32))
        ids.append(np.asarray(idx, dtype=np.int64))
        names.extend(str(s) for s in item_id)
    if index.ntotal != n:
        raise IndexBuildError(f"expected {n} vectors for this shard, the stream yielded {index.ntotal}")
    all_idx = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    check_unique(all_idx)
    apply_search_params(index, search_params or {})
    return index, all_idx, names


def check_unique(item_idx: np.ndarray) -> None:
    """Raise IndexBuildError naming an item_idx that occurs more than once (e.g. listed in two item files)."""
    s = np.sort(np.asarray(item_idx, dtype=np.int64))
    dup = s[1:][s[1:] == s[:-1]]
    if len(dup):
        raise IndexBuildError(f"item_idx {dup[0]} occurs more than once in the catalogue ({len(dup)} duplicates); "
                              f"each item must be listed once")


def _checked(it: Iterable, dim: int):
    for idx, emb, item_id in it:
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != dim:
            raise IndexBuildError(f"embedding batch of shape {emb.shape}, expected (b, {dim})")
        yield idx, emb, item_id


def shard_file_names(shard: int) -> tuple[str, str]:
    """(index file, id map file) names of shard ``shard`` inside the index directory."""
    return f"shard-{shard:05d}.faiss", f"shard-{shard:05d}.ids.parquet"


def write_shard(directory: str, shard: int, index: faiss.Index, item_idx: np.ndarray, item_id: Sequence[str],
                build_seconds: float = 0.0) -> tuple[ShardInfo, dict[str, str]]:
    """Write shard files to ``directory`` (local or URI) via local temp files.

    Returns:
        (ShardInfo, {relative file name: sha256}).
    """
    index_name, ids_name = shard_file_names(shard)
    table = pa.table({"item_idx": pa.array(np.asarray(item_idx, dtype=np.int64)),
                      "item_id": pa.array(list(item_id), pa.string())})
    digests = {}
    with tempfile.TemporaryDirectory(prefix="twotower-shard-") as tmp:
        faiss.write_index(index, os.path.join(tmp, index_name))
        pq.write_table(table, os.path.join(tmp, ids_name))
        for name in (index_name, ids_name):
            digests[name] = storage.sha256(os.path.join(tmp, name))
            storage.upload(os.path.join(tmp, name), storage.join(directory, name))
    return ShardInfo(shard, int(index.ntotal), index_name, ids_name, round(build_seconds, 3)), digests


def build_and_write_shard(directory: str, shard: int, dim: int, factory: str, batches: Batches, n: int,
                          **kwargs) -> tuple[ShardInfo, dict[str, str]]:
    """:func:`build_index` then :func:`write_shard`; ``kwargs`` go to ``build_index``. Timed."""
    t0 = time.perf_counter()
    index, idx, ids = build_index(dim, factory, batches, n, **kwargs)
    return write_shard(directory, shard, index, idx, ids, time.perf_counter() - t0)
