"""Assembling a manifest from built shards, and an in-process builder for catalogues that fit in memory.

The Ray job (``twotower.distributed.index_job``) builds the same directory layout with the embedding
and shard-building work spread over a cluster; this module is its single-process counterpart (tests,
small catalogues, notebooks). :func:`flat_index` builds the exact one-shard index in memory only (no
files), e.g. the exact search of ``twotower.serve.Recommender`` without an index directory.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from twotower import storage
from .build import (DEFAULT_EF_CONSTRUCTION, build_and_write_shard, build_index, check_unique,
                    default_search_params, parse_factory, shard_file_names, shard_of)
from .manifest import PARTITION, Manifest, ShardInfo
from .sharded import ShardedIndex

if TYPE_CHECKING:                      # twotower.index does not import torch (twotower.model) at run time
    from twotower.model.checkpoint import CheckpointInfo


def checkpoint_record(info: CheckpointInfo) -> dict:
    """The manifest's ``checkpoint`` entry (``path``, ``model_sha256``, ``epoch``) of a checkpoint's
    :func:`~twotower.model.checkpoint.read_checkpoint`."""
    return {"path": info.path, "model_sha256": info.model_sha256 or None, "epoch": info.meta.get("epoch")}


def make_manifest(results: Sequence[tuple[ShardInfo, dict[str, str]]], *, dim: int, factory: str,
                  search_params: dict[str, int], checkpoint: dict, normalized: bool, build_params: dict,
                  extra_files: dict[str, str] | None = None, extra: dict | None = None) -> Manifest:
    """Manifest over shard results ``(ShardInfo, {file: sha256})`` (any order) plus ``extra_files``."""
    results = sorted(results, key=lambda r: r[0].shard)
    files = dict(extra_files or {})
    for _, digests in results:
        files.update(digests)
    shards = [r[0] for r in results]
    partition = {**PARTITION, "num_shards": len(shards)}
    return Manifest(dim=dim, factory=factory, shards=shards, files=files, search_params=search_params,
                    checkpoint=checkpoint, normalized=normalized, num_items=sum(s.count for s in shards),
                    partition=partition, build_params=build_params, extra=dict(extra or {}))


def build_local_index(out: str | os.PathLike, embeddings: np.ndarray, item_idx: np.ndarray,
                      item_id: Sequence[str], *, factory: str = "Flat", num_shards: int = 1,
                      nprobe: int | None = None, ef_search: int | None = None,
                      ef_construction: int = DEFAULT_EF_CONSTRUCTION, checkpoint: dict | None = None,
                      normalized: bool = True, overwrite: bool = False, seed: int = 0) -> Manifest:
    """Build an index directory at ``out`` (local or URI) from in-memory embeddings, in this process.

    Args:
        embeddings: (N, D) float32. item_idx: (N,) int64 (item 0, the unknown item, must not appear).
        item_id: N raw ids (they decide the shard, see :func:`shard_of`).
        factory / nprobe / ef_search / ef_construction: see :mod:`twotower.index.build`.
        checkpoint: the manifest's checkpoint entry (:func:`checkpoint_record`).
    Returns:
        The written manifest.
    Raises:
        FileExistsError: ``out`` non-empty without ``overwrite``. IndexBuildError: see ``build_index``
            (also: an item_idx listed twice).
        ValueError: mismatched lengths or item_idx containing 0.
    """
    emb, item_idx, item_id = _checked_catalogue(embeddings, item_idx, item_id)
    if storage.is_nonempty(out) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; use overwrite to replace it")
    dim = emb.shape[1]
    parse_factory(factory, dim)
    params = default_search_params(factory, nprobe, ef_search)
    shard = shard_of(item_id, num_shards)
    staging = storage.staging_dir(out)
    try:
        results = []
        for s in range(num_shards):
            rows = np.flatnonzero(shard == s)
            batch = [(item_idx[rows], emb[rows], [item_id[r] for r in rows])]
            results.append(build_and_write_shard(staging, s, dim, factory, lambda b=batch: iter(b), len(rows),
                                                 search_params=params, seed=seed + s,
                                                 ef_construction=ef_construction))
        manifest = make_manifest(results, dim=dim, factory=factory, search_params=params,
                                 checkpoint=checkpoint or {}, normalized=normalized,
                                 build_params={"seed": seed, "ef_construction": ef_construction})
        manifest.write(staging)
        storage.publish(staging, out, overwrite=overwrite)
    except BaseException:
        storage.delete_dir(staging)
        raise
    return manifest


def flat_index(embeddings: np.ndarray, item_idx: np.ndarray, item_id: Sequence[str], *,
               checkpoint: dict | None = None, normalized: bool = True) -> ShardedIndex:
    """An exact (``Flat``) one-shard :class:`ShardedIndex` over in-memory embeddings; nothing is written.

    Its ``search`` is the one of a loaded index directory (exclusions, score descending, ties by
    ascending item_idx, -inf / -1 padding): exactly the answers of :func:`build_local_index` with
    ``factory="Flat"`` loaded by ``ShardedIndex.load``, any shard count. ``path`` is "".

    Args:
        embeddings: (N, D) float32. item_idx: (N,) int64, no 0 and no repeats. item_id: N raw ids.
        checkpoint: the manifest's checkpoint entry (:func:`checkpoint_record`).
    Raises:
        ValueError: mismatched lengths or item_idx containing 0. IndexBuildError: an item_idx listed twice.
    """
    emb, item_idx, item_id = _checked_catalogue(embeddings, item_idx, item_id)
    index, idx, ids = build_index(emb.shape[1], "Flat", lambda: iter([(item_idx, emb, item_id)]), len(emb))
    shard = ShardInfo(0, len(idx), *shard_file_names(0))
    manifest = make_manifest([(shard, {})], dim=emb.shape[1], factory="Flat", search_params={},
                             checkpoint=checkpoint or {}, normalized=normalized, build_params={"in_memory": True})
    return ShardedIndex(manifest, [index], [idx], [np.asarray(ids, dtype=object)])


def _checked_catalogue(embeddings, item_idx, item_id) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(float32 (N, D) contiguous, int64 (N,), N strings); raises ValueError / IndexBuildError."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    item_idx = np.asarray(item_idx, dtype=np.int64)
    item_id = [str(i) for i in item_id]
    if emb.ndim != 2 or len(emb) != len(item_idx) or len(item_idx) != len(item_id):
        raise ValueError(f"embeddings {emb.shape}, item_idx {item_idx.shape}, item_id ({len(item_id)},) do not fit")
    if (item_idx == 0).any():
        raise ValueError("item_idx 0 (the unknown item) must not be indexed")
    check_unique(item_idx)
    return emb, item_idx, item_id
