"""Ray Serve deployments (thin adapters over the pure modules) and the application builder.

    HTTP -> Ingress (FastAPI) --encode--> QueryEncoder (serve.batch)
                              --search--> Searcher0 .. Searcher{S-1} (one per shard, serve.batch)
                              --rerank--> QueryEncoder (scoring_layer only)
    colocate:  HTTP -> Ingress (FastAPI: encode and search every shard in this replica, no hop)

``build_app(args)`` (``import_path: twotower.serve.app:build_app``) builds the application from
:class:`~twotower.serve.config.AppArgs`. Index swap: new ``user_config.index_dir`` for the searchers
(``reconfigure``); see :mod:`twotower.serve.config`. Each Ingress replica builds its FastAPI app after
loading the model (``__serve_build_asgi_app__``, :func:`twotower.serve.routes.build_api`): the request
models and the OpenAPI document are generated from the loaded model's schema.
"""
from __future__ import annotations

import asyncio
import logging

import faiss
import numpy as np
import torch
from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from twotower.model.checkpoint import read_checkpoint

from .colocated import ColocatedBackend
from .config import AppArgs, searcher_name
from .fanout import search_all
from .loading import load_encoder, load_serving_state
from .metrics import Gate, IndexVersionGauge, RequestMetrics, ShardErrors
from .query import QueryInput
from .routes import build_api
from .schema import Unavailable
from .shards import SearchRequest, SearchResult, ShardStore, reconfigure_store

log = logging.getLogger("twotower.serve")
STATUS_TIMEOUT_S = 5.0


@serve.deployment(name="QueryEncoder", max_ongoing_requests=64)
class QueryEncoderDeployment:
    """Query vectors from resolved requests, batched across concurrent requests (reads the checkpoint
    once per replica)."""

    def __init__(self, checkpoint: str, dataset: str | None = None, user_cache: str | None = None,
                 threads: int = 1, max_batch_size: int = 32, batch_wait_timeout_s: float = 0.002):
        torch.set_num_threads(threads)
        info = read_checkpoint(checkpoint)
        self.encoder, self.model_version = load_encoder(info, dataset, user_cache), info.model_version
        self.encode.set_max_batch_size(max_batch_size)
        self.encode.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def encode(self, queries: list[QueryInput]) -> list[np.ndarray]:
        return list(self.encoder.encode(queries))

    async def rerank(self, query: QueryInput, candidates: np.ndarray) -> np.ndarray:
        return self.encoder.rerank([query], np.asarray(candidates, np.int64)[None, :])[0]

    async def item_vector(self, item_idx: int) -> np.ndarray:
        return self.encoder.item_vectors(np.asarray([item_idx]))[0]

    async def info(self) -> dict:
        return {"model_version": self.model_version, "context_mode": self.encoder.mode.value}


@serve.deployment(name="Searcher", max_ongoing_requests=64)
class ShardSearcher:
    """One index shard. ``user_config``: ``{"index_dir": DIR, "verify": bool, "search_params": {...}}``;
    ``model_sha256``: the serving checkpoint's, every index loaded must be built from it."""

    def __init__(self, shard: int, model_sha256: str | None = None, threads: int = 1, max_batch_size: int = 32,
                 batch_wait_timeout_s: float = 0.001):
        faiss.omp_set_num_threads(threads)
        self.store, self.model_sha256 = ShardStore(shard), model_sha256
        self.version_gauge = IndexVersionGauge(searcher_name(shard))
        self.lock = asyncio.Lock()
        self.search.set_max_batch_size(max_batch_size)
        self.search.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def reconfigure(self, config: dict) -> None:
        """Load ``config["index_dir"]`` (:func:`~twotower.serve.shards.reconfigure_store`): in a thread while
        the loaded version keeps answering; a first load that fails raises (the replica does not start)."""
        version = await reconfigure_store(self.store, config, self.model_sha256, self.lock)
        if version is not None:
            self.version_gauge.serve(version)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.001)
    async def search(self, requests: list[SearchRequest]) -> list[SearchResult]:
        return self.store.search_many(requests)

    async def status(self) -> dict:
        self.version_gauge.serve(self.store.current)            # keep the gauge exported
        return self.store.status()


class _ServeBackend:
    """The recommender's Backend over deployment handles. Every call is bounded by ``timeout_s`` (the
    fan-out's retries included); failures and timeouts become :class:`Unavailable` (HTTP 503)."""

    def __init__(self, encoder: DeploymentHandle, searchers: list[DeploymentHandle], timeout_s: float = 10.0,
                 retry_after_s: int = 2):
        self.encoder, self.searchers = encoder, searchers
        self.timeout_s, self.retry_after_s = timeout_s, retry_after_s
        self.calls = [(lambda req, h=h: h.search.remote(req)) for h in searchers]
        self.names = [h.deployment_name for h in searchers]
        self.shard_errors = ShardErrors()

    async def _encoder(self, method: str, *args):
        response = getattr(self.encoder, method).remote(*args)
        try:
            return await asyncio.wait_for(response, self.timeout_s)
        except Exception as e:
            if isinstance(e, asyncio.TimeoutError):
                response.cancel()
            why = f"no answer within {self.timeout_s:.1f} s" if isinstance(e, asyncio.TimeoutError) else \
                f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
            raise Unavailable(f"query encoder ({self.encoder.deployment_name}) unavailable: {why}; retry after "
                              f"{self.retry_after_s} s", [self.encoder.deployment_name], self.retry_after_s) from e

    async def encode(self, query):
        return await self._encoder("encode", query)

    async def rerank(self, query, candidates):
        return await self._encoder("rerank", query, candidates)

    async def item_vector(self, item_idx):
        return await self._encoder("item_vector", item_idx)

    async def search(self, query, k, exclude):
        return await search_all(self.calls, query, k, exclude, timeout_s=self.timeout_s, names=self.names,
                                retry_after_s=self.retry_after_s, on_error=self.shard_errors)

    async def statuses(self) -> list[dict]:
        async def one(s: int, h: DeploymentHandle) -> dict:
            try:
                return await asyncio.wait_for(h.status.remote(), STATUS_TIMEOUT_S)
            except Exception as e:
                return {"shard": s, "loaded": False, "last_error": f"{type(e).__name__}: {e}"}
        return list(await asyncio.gather(*(one(s, h) for s, h in enumerate(self.searchers))))


@serve.deployment(name="Ingress", max_ongoing_requests=64)
@serve.ingress()
class Ingress:
    """HTTP API (routes and responses: :mod:`twotower.serve.routes`; bodies: :mod:`twotower.serve.schema` and
    :mod:`twotower.serve.contract`; errors: :mod:`twotower.serve.http`). ``colocate`` (``{"num_shards",
    "user_cache", "threads", "search_threads", "model_sha256"}``): encode and search here (:mod:`twotower.serve.colocated`)
    instead of through ``encoder`` and ``searchers``."""

    def __init__(self, encoder: DeploymentHandle | None, searchers: list[DeploymentHandle], checkpoint: str,
                 dataset: str | None = None, backend_timeout_s: float = 10.0, retry_after_s: int = 2,
                 colocate: dict | None = None):
        info = read_checkpoint(checkpoint)
        self.state = load_serving_state(info, dataset)
        self.colocate = colocate
        if colocate is not None:
            torch.set_num_threads(colocate.get("threads", 1))
            faiss.omp_set_num_threads(colocate.get("search_threads", 1))
            local = load_encoder(info, dataset, colocate.get("user_cache"), users=self.state.users)
            self.backend = ColocatedBackend(local, colocate["num_shards"], colocate.get("model_sha256"),
                                            retry_after_s, backend_timeout_s)
            self.version_gauge = IndexVersionGauge("Ingress")
            self.backend.on_status = self.version_gauge.serve
        else:
            self.backend = _ServeBackend(encoder, searchers, backend_timeout_s, retry_after_s)
        self.gate = Gate(retry_after_s=retry_after_s)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """This replica's FastAPI app, built for the loaded model (called by Serve after ``__init__``)."""
        shards = len(self.backend.stores) if self.colocate is not None else len(self.backend.searchers)
        api = build_api(self.state, self.backend, shards)
        api.add_middleware(RequestMetrics, gate=self.gate)  # metrics, draining (twotower.serve.metrics)
        return api

    async def reconfigure(self, config: dict) -> None:
        """``user_config``: ``{"draining": bool}``; draining, new requests get 503 + Retry-After while the
        ones in flight finish (``twotower serve``'s graceful shutdown). Colocated, also the searchers'
        ``index_dir`` / ``verify`` / ``search_params`` (:func:`~twotower.serve.shards.reconfigure_store`)."""
        self.gate.draining = bool((config or {}).get("draining", False))
        if self.colocate is not None:
            version = await self.backend.reconfigure(config)
            if version is not None:
                self.version_gauge.serve(version)

    async def drain_status(self) -> dict:
        """``{"draining": bool, "in_flight": int}``: HTTP requests this replica is answering now."""
        return {"draining": self.gate.draining, "in_flight": self.gate.in_flight}


def build_app(args: dict) -> serve.Application:
    """The twotower Serve application from :class:`AppArgs` (a dict, as Serve passes config ``args``).

    Raises:
        pydantic.ValidationError: bad args. CheckpointError: unreadable checkpoint.
        IndexFormatError / ValueError: shard count unknown (neither ``num_shards`` nor a readable ``index``).
    """
    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    sha = read_checkpoint(a.checkpoint).model_sha256           # this process's one read (each replica reads its own)
    quiet = {"enable_access_log": False}
    common = {"ray_actor_options": {"num_cpus": a.num_cpus}, "max_ongoing_requests": a.max_ongoing_requests,
              "health_check_period_s": a.health_check_period_s}
    batching = (a.max_batch_size, a.batch_wait_timeout_s)
    ingress = Ingress.options(num_replicas=a.ingress_replicas, logging_config={"enable_access_log": a.access_log},
                              **common)
    user_config = {"index_dir": a.index, "verify": a.verify} if a.index else None
    if a.colocate:
        colocate = {"user_cache": a.user_cache, "threads": a.encoder_threads, "search_threads": a.search_threads,
                    "model_sha256": sha, "num_shards": a.shards()}
        return ingress.options(user_config=user_config).bind(None, [], a.checkpoint, a.dataset, a.backend_timeout_s,
                                                             a.retry_after_s, colocate)
    encoder = QueryEncoderDeployment.options(num_replicas=a.encoder_replicas, logging_config=quiet, **common).bind(
        a.checkpoint, a.dataset, a.user_cache, a.encoder_threads, *batching)
    searchers = [ShardSearcher.options(name=searcher_name(s), num_replicas=a.shard_replicas, user_config=user_config,
                                       logging_config=quiet, **common).bind(s, sha, a.search_threads, *batching)
                 for s in range(a.shards())]
    return ingress.bind(encoder, searchers, a.checkpoint, a.dataset, a.backend_timeout_s, a.retry_after_s)
