"""``recommend`` / ``similar_items``: the one request pipeline used offline and behind HTTP.

    request -> plan (validate context, look up the user, pick the path, exclusions)
            -> encode (query vector) -> search all shards (exact merge)
            -> [scoring_layer: re-rank the top ``rerank_depth`` with the head] -> response

The steps that need the model or the index go through a :class:`Backend`: the Serve ingress passes one
whose methods call the encoder and searcher deployments (``serve/app.py``); the offline
:class:`~twotower.serve.offline.Recommender` passes a :class:`~twotower.serve.offline.LocalBackend` (a
:class:`~.query.QueryEncoder` and a :class:`~twotower.index.ShardedIndex` in this process), which
notebooks, batch scripts, the benchmark and the equivalence tests use.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from twotower.model.config import ContextMode
from twotower.model.schema import DatasetSchema

from .catalogue import Catalogue
from .context import resolve_context
from .query import QueryInput
from .schema import (RecommendPath, RecommendRequest, RecommendResponse, RequestError, ScoredItem,
                     SimilarItemsRequest, SimilarItemsResponse)
from .user_state import UserState
from .values import informative


@dataclass
class ServingState:
    """What planning and response shaping need (no model weights, no index): built by the ingress."""

    schema: DatasetSchema
    mode: ContextMode
    model_version: str
    users: UserState
    catalogue: Catalogue
    context_vocabs: Mapping[str, dict[str, int]] = field(default_factory=dict)
    rerank_depth: int = 100


@dataclass
class Plan:
    """A validated request: ``query`` is None on the popularity path; ``exclude`` int64 item indices."""

    user_id: str
    k: int
    path: RecommendPath
    strategy: str | None
    context: dict[str, object]
    exclude: np.ndarray
    query: QueryInput | None
    unknown_recent: list[str] = field(default_factory=list)


class Backend(Protocol):
    """Model and index operations (async so the Serve ingress can await deployments)."""

    async def encode(self, query: QueryInput) -> np.ndarray: ...            # float32 (D,)
    async def search(self, query: np.ndarray, k: int, exclude: np.ndarray | None
                     ) -> tuple[str, np.ndarray, np.ndarray]: ...           # version, scores (k,), items (k,)
    async def rerank(self, query: QueryInput, candidates: np.ndarray) -> np.ndarray: ...  # float32 (R,)
    async def item_vector(self, item_idx: int) -> np.ndarray: ...           # float32 (D,)


def plan_recommend(req: RecommendRequest, state: ServingState, now: float | None = None) -> Plan:
    """Validate and resolve a request. Raises RequestError (context or user_features field)."""
    context = resolve_context(req.context, state.schema, state.context_vocabs, now)
    extra = state.catalogue.lookup_many(req.exclude_items)
    recent, unknown = state.catalogue.split_known(req.recent_items)
    if req.exclude_seen:
        extra = np.union1d(extra, recent)
    user_idx = state.users.lookup(req.user_id)
    times = _history_times(state, user_idx, recent, req.context, now)
    if user_idx > 0:
        seen = state.users.seen(user_idx) if req.exclude_seen else np.zeros(0, np.int64)
        history = extend_history(state.users.history(user_idx), recent)
        query = QueryInput(user_idx, history, context, extended=len(recent) > 0, history_time=times)
        return Plan(req.user_id, req.k, "model", None, context, np.union1d(seen, extra), query, unknown)
    feats = state.users.encode_user_features(req.user_features)
    kinds = {f.name: f for f in state.schema.user_features}
    if len(recent) or any(informative(kinds[name], v) for name, v in feats.items()):
        history = extend_history(np.zeros(state.users.history_length, np.int64), recent)
        query = QueryInput(0, history, context, feats, extended=len(recent) > 0, history_time=times)
        strategy = "recent_items" if len(recent) else "user_features"
        return Plan(req.user_id, req.k, "cold_start", strategy, context, np.unique(extra), query, unknown)
    return Plan(req.user_id, req.k, "cold_start", "popularity", context, np.unique(extra), None, unknown)


def _history_times(state: ServingState, user_idx: int, recent: np.ndarray, context, now: float | None
                   ) -> np.ndarray | None:
    """int64 (N,) timestamps of the (extended) history for a state that keeps them (time-gap models), else
    None. The request's ``recent_items`` happened at its ``context.timestamp`` (else ``now``, else the
    current time): they are what the user just did."""
    if state.users.times is None:
        return None
    stored = state.users.history_times([user_idx])[0]
    if not len(recent):
        return stored
    ts = (context or {}).get("timestamp")
    ts = int(ts if isinstance(ts, (int, float)) and not isinstance(ts, bool) else (now or time.time()))
    hist = state.users.history(user_idx)
    out = np.concatenate([np.full(len(recent), ts, np.int64), stored[hist > 0]])[:len(stored)]
    return np.pad(out, (0, len(stored) - len(out)))


def extend_history(history: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """A stored history int64 (N,) (most recent first, 0-padded) extended by ``recent`` item indices int64
    (R,) (oldest first, as requests give them) -> int64 (N,): the N most recent items of the extended
    sequence, most recent first, 0-padded."""
    n = len(history)
    out = np.concatenate([np.asarray(recent, np.int64)[::-1], history[history > 0]])[:n]
    return np.pad(out, (0, n - len(out)))


def rerank_merge(dot: np.ndarray, items: np.ndarray, head: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``scoring_layer`` order of candidates (R,): the first len(head) valid candidates by head score
    (ties by ascending item_idx), then the remaining ones in dot-product order; returns the top-k
    (scores: head scores for re-ranked items, dot products for the others)."""
    valid = items >= 0
    dot, items = dot[valid], items[valid]
    d = min(len(head), len(items))
    h = np.asarray(head[:d], np.float32)
    order = np.lexsort((items[:d], -h))
    scores = np.concatenate([h[order], dot[d:]])[:k]
    return scores.astype(np.float32), np.concatenate([items[:d][order], items[d:]])[:k].astype(np.int64)


def _items(state: ServingState, scores: np.ndarray, items: np.ndarray) -> list[ScoredItem]:
    cat = state.catalogue
    return [ScoredItem(item_id=str(cat.item_ids[i]), score=float(s), title=cat.title(int(i)))
            for s, i in zip(scores, items) if i > 0]


async def recommend(req: RecommendRequest, state: ServingState, backend: Backend,
                    now: float | None = None) -> RecommendResponse:
    """Top-``req.k`` items for a request (see the module docstring).

    Raises:
        RequestError: invalid context / user features (HTTP 422).
        ShardsUnavailable: the index shards could not answer (HTTP 503), from ``backend.search``.
    """
    plan = plan_recommend(req, state, now)
    version = None
    if plan.query is None:
        scores, items = state.catalogue.popularity_topk(plan.k, plan.exclude)
    else:
        vector = await backend.encode(plan.query)
        if state.mode == ContextMode.SCORING_LAYER:
            depth = max(plan.k, state.rerank_depth)
            version, dot, cand = await backend.search(vector, depth, plan.exclude)
            top = cand[:state.rerank_depth]
            head = await backend.rerank(plan.query, top[top >= 0])
            scores, items = rerank_merge(dot, cand, head, plan.k)
        else:
            version, scores, items = await backend.search(vector, plan.k, plan.exclude)
    return RecommendResponse(user_id=plan.user_id, items=_items(state, scores, items), path=plan.path,
                             cold_start_strategy=plan.strategy, model_version=state.model_version,
                             index_version=version, context=plan.context,
                             unknown_recent_items=plan.unknown_recent)


async def similar_items(req: SimilarItemsRequest, state: ServingState, backend: Backend) -> SimilarItemsResponse:
    """The ``req.k`` nearest items to ``req.item_id`` by inner product of item embeddings (itself excluded).

    Raises:
        RequestError: unknown item (HTTP 404, field ``item_id``).
    """
    idx = state.catalogue.lookup(req.item_id)
    if idx == 0:
        raise RequestError("item_id", f"unknown item {req.item_id!r}", status=404)
    vector = await backend.item_vector(idx)
    version, scores, items = await backend.search(vector, req.k, np.asarray([idx], np.int64))
    return SimilarItemsResponse(item_id=req.item_id, items=_items(state, scores, items),
                                model_version=state.model_version, index_version=version)
