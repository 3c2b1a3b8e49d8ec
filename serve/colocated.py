"""Colocated serving (``AppArgs.colocate``): the query encoder and the whole index in the Ingress replica.

    HTTP -> Ingress (FastAPI: plan, encode, search every shard, merge, respond)

No hop between Serve replicas: a request costs what the no-op floor costs (proxy + FastAPI ingress) plus
the model and index work, so it is the mode for a catalogue whose index fits one replica's memory (see
``docs/benchmarks.md``). Scale out with Ingress replicas (each holds the model and the index). An index
swap is a new ``user_config.index_dir`` of the Ingress (loaded in a thread while the old version answers,
then swapped atomically: a request is answered entirely from one version). Bigger indexes keep the
per-shard ``SearcherK`` deployments (the default).
"""
from __future__ import annotations

import asyncio

import numpy as np

from .fanout import search_all
from .offline import LocalBackend
from .query import QueryEncoder
from .shards import SearchRequest, SearchResult, ShardStore, reconfigure_store


class ColocatedBackend(LocalBackend):
    """:class:`~.recommender.Backend` over a QueryEncoder and one :class:`ShardStore` per shard, all in this
    process: the searchers' code without the hops. Each shard is searched in turn in this thread (a
    thread pool costs more than it saves for one query) and the results are merged exactly by
    :func:`~twotower.serve.fanout.search_all`, which also keeps an answer within one index version while
    :meth:`reconfigure` loads a new one shard by shard."""

    def __init__(self, encoder: QueryEncoder, num_shards: int, model_sha256: str | None = None,
                 retry_after_s: int = 2, timeout_s: float = 10.0):
        super().__init__(encoder, index=None, version="")
        self.stores = [ShardStore(s) for s in range(num_shards)]
        self.model_sha256, self.retry_after_s, self.timeout_s = model_sha256, retry_after_s, timeout_s
        self.lock = asyncio.Lock()
        self.calls = [(lambda req, st=st: _search(st, req)) for st in self.stores]
        self.names = [f"shard {s}" for s in range(num_shards)]
        self.on_status = None                 # called with the version served on every statuses() (metrics)

    async def reconfigure(self, config: dict | None) -> str | None:
        """Load ``config["index_dir"]`` into every shard store (:func:`reconfigure_store`); the version now
        answering (None without ``index_dir``). Raises like :func:`reconfigure_store` on a first load."""
        versions = [await reconfigure_store(st, config, self.model_sha256, self.lock) for st in self.stores]
        return versions[-1] if versions else None

    async def search(self, query: np.ndarray, k: int, exclude: np.ndarray | None):
        """(version, scores float32 (k,), item_idx int64 (k,)); ShardsUnavailable (503) without an index."""
        return await search_all(self.calls, np.asarray(query, np.float32), k, exclude, timeout_s=self.timeout_s,
                                names=self.names, retry_after_s=self.retry_after_s, attempts=1)

    async def statuses(self) -> list[dict]:
        if self.on_status is not None:
            self.on_status(self.stores[-1].current if self.stores else None)
        return [st.status() for st in self.stores]


async def _search(store: ShardStore, request: SearchRequest) -> SearchResult:
    return store.search_many([request])[0]
