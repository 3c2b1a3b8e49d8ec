"""The index job: checkpoint + item catalogue -> S FAISS shards + manifest (Ray Data + Ray tasks).

1. Embed (:mod:`twotower.distributed.index_embed`): Ray Data reads the item parquet files and an actor
   pool runs the item tower; embeddings are written as parquet partitioned by shard
   (``embeddings/shard=K/``; shard = blake2b-64(item_id) mod S, see :mod:`twotower.index.manifest`).
2. Build: one Ray task per shard streams its partition twice (a random training sample for IVF/PQ,
   then ``add``), writes ``shard-K.faiss`` + ``shard-K.ids.parquet`` and returns their sha256.
3. The driver writes ``manifest.json`` and publishes the staging directory (a hidden sibling of OUT) with
   :func:`twotower.storage.publish`: a rename on local disks; on object stores the files are
   copied with the manifest last. On any failure the staging directory is deleted and OUT is untouched,
   so a failed job never leaves an index that looks complete.

Paths (checkpoint, dataset, items, out) may be local or pyarrow filesystem URIs. On a multi-node
cluster a local ``out`` must be on storage every node shares; use a URI otherwise. Ray:
:func:`~twotower.distributed.local_ray.start_ray` (joins ``RAY_ADDRESS``, else starts a loopback-only
local runtime with >= 4 logical CPUs; a Ray already initialised in the process is used as it is).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow.parquet as pq
import ray

from twotower.distributed.index_embed import (check_item_files, embed_items, item_paths,
                                              iter_shard, shard_rows)
from twotower.distributed.local_ray import start_ray
from twotower import storage
from twotower.index.build import (DEFAULT_EF_CONSTRUCTION, build_and_write_shard, check_unique,
                                  default_search_params, parse_factory)
from twotower.index.local import checkpoint_record, make_manifest
from twotower.index.manifest import Manifest, verify_model_sha256
from twotower.model.checkpoint import CheckpointInfo, check_dataset, read_checkpoint
from twotower.model.schema import DatasetSchema

log = logging.getLogger("twotower.index")
EMBEDDINGS_INFO = "_embeddings.json"


@dataclass
class IndexJobConfig:
    """Everything ``twotower index`` needs.

    Attributes:
        checkpoint: checkpoint directory (local or URI). out: output index directory (local or URI).
        dataset: prepared dataset directory whose ``items.parquet`` is the catalogue (optional when
            ``items`` is given). items: more item parquet files or directories (columns item_idx, item_id).
        num_shards: S >= 1. factory: FAISS factory string. nprobe / ef_search: search parameters
            (defaults: :func:`twotower.index.build.default_search_params`). ef_construction: HNSW build.
        batch_size: rows per embedding batch. num_actors: size of the embedding actor pool.
        cpus_per_actor: CPUs per actor (torch threads). use_gpu: one GPU per actor.
        build_cpus: CPUs (and FAISS OpenMP threads) per shard-building task.
        keep_embeddings: keep ``embeddings/`` in the output (listed in the manifest with sha256).
        embeddings: reuse the ``embeddings/`` directory of an earlier index built from the same checkpoint
            (skips stage 1; e.g. to try another factory string; another ``num_shards`` re-partitions by hash).
        overwrite: replace a non-empty ``out``. seed: training-sample seed (shard K uses seed + K).
    """

    checkpoint: str
    out: str
    dataset: str | None = None
    items: list[str] = field(default_factory=list)
    num_shards: int = 1
    factory: str = "Flat"
    nprobe: int | None = None
    ef_search: int | None = None
    ef_construction: int = DEFAULT_EF_CONSTRUCTION
    batch_size: int = 4096
    num_actors: int = 2
    cpus_per_actor: float = 1.0
    use_gpu: bool = False
    build_cpus: int = 1
    keep_embeddings: bool = True
    overwrite: bool = False
    seed: int = 0
    embeddings: str | None = None


def _build_shard(embeddings: str, out: str, shard: int, dim: int, factory: str, params: dict, seed: int,
                 ef_construction: int, threads: int, stored_shards: int, num_shards: int):
    """Ray task body: build and write one shard; returns (ShardInfo, {file: sha256})."""
    import faiss
    faiss.omp_set_num_threads(max(1, threads))
    n = shard_rows(embeddings, shard, stored_shards, num_shards)
    return build_and_write_shard(out, shard, dim, factory,
                                 lambda: iter_shard(embeddings, shard, dim, stored_shards, num_shards), n,
                                 search_params=params, seed=seed, ef_construction=ef_construction)


def build_shards(embeddings: str, out: str, *, num_shards: int, dim: int, factory: str, search_params: dict,
                 seed: int = 0, ef_construction: int = DEFAULT_EF_CONSTRUCTION, build_cpus: int = 1,
                 stored_shards: int | None = None) -> list:
    """Stage 2: one Ray task per shard over ``embeddings`` (partitioned by stage 1 into ``stored_shards``,
    default ``num_shards``; when they differ every task reads all partitions and keeps its own rows).

    Returns:
        [(ShardInfo, {file: sha256})] ordered by shard. Raises the first failed task's error (e.g.
        IndexBuildError) after every task has ended, so none still writes into ``out`` when it is removed.
    """
    task = ray.remote(_build_shard).options(num_cpus=build_cpus)
    refs = [task.remote(embeddings, out, s, dim, factory, search_params, seed + s, ef_construction, build_cpus,
                        stored_shards or num_shards, num_shards) for s in range(num_shards)]
    results, errors = [], []
    for ref in refs:
        try:
            results.append(ray.get(ref))
        except Exception as e:      # noqa: BLE001 - re-raised below, after the other tasks end
            errors.append(e)
    if errors:
        raise errors[0]
    return results


def _check_reused(embeddings: str, model_sha: str) -> int:
    """Partition count of a reused ``embeddings`` directory.

    Raises:
        ValueError: not an embeddings directory of this job; IndexFormatError (a ValueError): written for
            another model (:func:`~twotower.index.manifest.verify_model_sha256`).
    """
    path = storage.join(embeddings, EMBEDDINGS_INFO)
    info = storage.read_json(path, ValueError, "missing; not an embeddings directory of the index job")
    verify_model_sha256(info.get("model_sha256"), model_sha, path)
    return int(info["num_shards"])


def _ids_column(directory: str, name: str) -> np.ndarray:
    fs, p = storage.resolve(storage.join(directory, name))
    return pq.read_table(p, filesystem=fs, columns=["item_idx"]).column("item_idx").to_numpy()


def _check_inputs(cfg: IndexJobConfig) -> tuple[CheckpointInfo, list[str], int]:
    """The checks made before Ray starts (see :func:`run_index_job` for the errors). Returns the checkpoint
    info (the job's one read of checkpoint.json), the item files to embed (none when reusing embeddings)
    and the number of partitions of the embeddings the shards are built from."""
    if cfg.num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {cfg.num_shards}")
    if storage.is_nonempty(cfg.out) and not cfg.overwrite:
        raise FileExistsError(f"{cfg.out} already exists and is not empty; use --overwrite to replace it")
    ckpt = read_checkpoint(cfg.checkpoint)
    parse_factory(cfg.factory, ckpt.model_config.final_embedding_dim)
    if cfg.embeddings is not None:
        return ckpt, [], _check_reused(cfg.embeddings, ckpt.model_sha256)
    if cfg.dataset:
        check_dataset(ckpt.schema, DatasetSchema.load(cfg.dataset), checkpoint=cfg.checkpoint, dataset_dir=cfg.dataset)
    paths = item_paths(cfg.dataset, cfg.items)
    check_item_files(paths)                  # footers + columns of every item file
    return ckpt, paths, cfg.num_shards


def _embed_stage(cfg: IndexJobConfig, ckpt: CheckpointInfo, paths: list[str], embeddings: str,
                 stored_shards: int) -> dict:
    """Stage 1 into ``embeddings`` (plus its ``_embeddings.json``), or the row count of reused embeddings;
    returns the manifest's ``extra.job.embed`` record."""
    if cfg.embeddings is not None:
        return {"reused": str(cfg.embeddings), "rows": sum(shard_rows(embeddings, s) for s in range(stored_shards))}
    embed = embed_items(ckpt, paths, embeddings, num_shards=cfg.num_shards, batch_size=cfg.batch_size,
                        num_actors=cfg.num_actors, use_gpu=cfg.use_gpu, cpus_per_actor=cfg.cpus_per_actor)
    info = {"num_shards": cfg.num_shards, "rows": embed["rows"], "dim": ckpt.model_config.final_embedding_dim,
            "model_sha256": ckpt.model_sha256}
    storage.write_bytes(storage.join(embeddings, EMBEDDINGS_INFO), json.dumps(info).encode())
    log.info("embedded %d items in %.1fs (%.0f items/s)", embed["rows"], embed["seconds"], embed["items_per_second"])
    return embed


def run_index_job(cfg: IndexJobConfig) -> Manifest:
    """Run the whole job (module docstring) and return the published manifest.

    Raises:
        FileExistsError: ``out`` is non-empty and ``overwrite`` is False (checked before any work).
        FileNotFoundError / DataFormatError: a missing item file, or one that is not parquet, is
            truncated or lacks item_idx/item_id (names the file; checked before Ray starts).
        CheckpointError: unreadable checkpoint. IndexBuildError: factory/shard mismatch (e.g. a shard
            with fewer vectors than IVF lists) or an item listed twice. ValueError: bad arguments or item
            indices outside the checkpoint's vocabulary; IncompatibleDatasetError (a ValueError): a
            ``dataset`` the checkpoint was not trained on; IndexFormatError (a ValueError): reused
            ``embeddings`` of another model.
    """
    ckpt, paths, stored_shards = _check_inputs(cfg)
    dim = ckpt.model_config.final_embedding_dim
    params = default_search_params(cfg.factory, cfg.nprobe, cfg.ef_search)
    started = start_ray(min_cpus=4, log_to_driver=False) is not None    # actor pool + build tasks: >= 4 CPUs
    staging = storage.staging_dir(cfg.out)
    embeddings = cfg.embeddings or storage.join(staging, "embeddings")
    try:
        embed = _embed_stage(cfg, ckpt, paths, embeddings, stored_shards)
        t0 = time.perf_counter()
        results = build_shards(embeddings, staging, num_shards=cfg.num_shards, dim=dim, factory=cfg.factory,
                               search_params=params, seed=cfg.seed, ef_construction=cfg.ef_construction,
                               build_cpus=cfg.build_cpus, stored_shards=stored_shards)
        build_seconds = time.perf_counter() - t0
        log.info("built %d shards in %.1fs", cfg.num_shards, build_seconds)
        extra_files = {}
        if cfg.embeddings is None and cfg.keep_embeddings:
            extra_files = {f"embeddings/{rel}": storage.sha256(storage.join(embeddings, rel))
                           for rel in storage.list_files(embeddings)}
        elif cfg.embeddings is None:
            storage.delete_dir(embeddings)
        job = {"embed": embed, "build_seconds_total": round(build_seconds, 3),
               "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "overwrite")}}
        manifest = make_manifest(results, dim=dim, factory=cfg.factory, search_params=params,
                                 checkpoint=checkpoint_record(ckpt),
                                 normalized=ckpt.model_config.l2_normalize,
                                 build_params={"seed": cfg.seed, "ef_construction": cfg.ef_construction},
                                 extra_files=extra_files, extra={"job": job})
        if manifest.num_items != embed["rows"]:
            raise RuntimeError(f"shards hold {manifest.num_items} vectors, {embed['rows']} items were embedded")
        check_unique(np.concatenate([_ids_column(staging, s.ids_file) for s in manifest.shards]))
        manifest.write(staging)
        storage.publish(staging, cfg.out, overwrite=cfg.overwrite)
        log.info("index with %d items in %d shards written to %s", manifest.num_items, cfg.num_shards, cfg.out)
        return manifest
    except BaseException:
        storage.delete_dir(staging)
        raise
    finally:
        if started:
            ray.shutdown()
