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

import numpy as np

from .offline import LocalBackend
from .query import QueryEncoder
from .schema import Unavailable
from .shards import SearchRequest, ShardStore


class ColocatedBackend(LocalBackend):
    """:class:`~.recommender.Backend` over a QueryEncoder and a :class:`ShardStore` of every shard
    (``ShardStore(None)``) in this process; ``statuses()`` as the Serve backend's (one entry)."""

    def __init__(self, encoder: QueryEncoder, store: ShardStore, retry_after_s: int = 2):
        super().__init__(encoder, index=None, version="")
        self.store, self.retry_after_s = store, retry_after_s

    async def search(self, query: np.ndarray, k: int, exclude: np.ndarray | None):
        """(version, scores float32 (k,), item_idx int64 (k,)); Unavailable (503) when no index is loaded."""
        r = self.store.search_many([SearchRequest(np.asarray(query, np.float32), k, exclude)])[0]
        if r.error is not None:
            raise Unavailable(f"index unavailable: {r.error}; retry after {self.retry_after_s} s", ["Ingress"],
                              self.retry_after_s)
        return r.version, r.scores, r.items

    async def statuses(self) -> list[dict]:
        return [self.store.status()]
