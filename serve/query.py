"""Query encoding per context mode: request state -> query vector (and, for ``scoring_layer``, head scores).

* ``user_tower``: query = user_tower(user id, user features, history, request context).
* ``trilinear``: query = user_rep * context_projection(request context), user_rep a row of the cached
  per-user table (:mod:`twotower.serve.user_cache`) for known users, computed for cold-start users.
* ``scoring_layer``: query = user_rep (dot-product candidates), then :meth:`QueryEncoder.rerank`
  scores candidates with the head MLP([u, v, u*v, ctx]).

Cold start: user index 0 (out of vocabulary, embeds to zero), the request's features of every kind as
user-feature overrides (a feature not given is missing: :func:`twotower.serve.values.missing`), an
empty history unless given.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from twotower.model.batch import feature_column, pad_lists
from twotower.model.config import ContextMode
from twotower.model.twotower import TwoTowerModel

from .context import context_batch
from .values import missing


@dataclass
class QueryInput:
    """One request, resolved.

    user_idx: user index (0 = unknown). history: int64 (N,) most recent first, 0-padded.
    context: {context feature: model value} (see :func:`twotower.serve.context.resolve_context`).
    user_features: {user feature: model value} overrides for unknown users (None for known users; see
        :meth:`twotower.serve.user_state.UserState.encode_user_features`).
    extended: True when ``history`` is not the user's stored one (the request's ``recent_items`` were
        added): the cached context-free representation is stale, so the user tower runs for this row.
    history_time: int64 (N,) unix seconds of ``history`` (0 at padding), for models with time-gap
        buckets; None otherwise.
    """

    user_idx: int
    history: np.ndarray
    context: Mapping[str, object]
    user_features: Mapping[str, object] | None = field(default=None)
    extended: bool = False
    history_time: np.ndarray | None = None


class QueryEncoder:
    """Computes query vectors for batches of :class:`QueryInput` with a loaded model (eval mode, CPU).

    Args:
        model: the TwoTowerModel of the checkpoint.
        user_cache: float32 (num_users, D) per-user representations (``trilinear``/``scoring_layer``;
            required there, ignored in ``user_tower`` mode), see :func:`build_user_cache`.
    Raises:
        ValueError: a cache missing or of the wrong shape for a mode that needs it.
    """

    def __init__(self, model: TwoTowerModel, user_cache: np.ndarray | None = None):
        self.model = model.eval()
        self.schema, self.mode = model.schema, ContextMode(model.cfg.context_mode)
        self.dim = model.cfg.final_embedding_dim
        self.user_cache = None
        if self.mode != ContextMode.USER_TOWER:
            if user_cache is None or tuple(user_cache.shape) != (self.schema.num_users, self.dim):
                shape = None if user_cache is None else tuple(user_cache.shape)
                raise ValueError(f"{self.mode.value} mode needs a user cache of shape "
                                 f"({self.schema.num_users}, {self.dim}), got {shape}")
            self.user_cache = torch.as_tensor(np.asarray(user_cache, np.float32))
        with torch.no_grad():
            self.item_embeddings = model.all_item_embeddings()          # (num_items, D), row 0 unknown

    def _batch(self, inputs: Sequence[QueryInput]) -> dict[str, torch.Tensor]:
        """Model input tensors; every user feature is passed as an override (table values for known users,
        request values for cold-start rows, :func:`~twotower.model.batch.feature_column` dtypes) so one
        batch can mix both."""
        user_idx = torch.as_tensor([int(q.user_idx) for q in inputs], dtype=torch.int64)
        hist = pad_lists([q.history for q in inputs], self.model.history_length)
        batch = {"user_idx": user_idx, "item_idx": torch.zeros_like(user_idx), "history": torch.from_numpy(hist)}
        if self.model.uses_history_time:
            if any(q.history_time is None for q in inputs):
                raise ValueError("the model embeds time gaps: every QueryInput needs history_time")
            batch["history_timestamp"] = torch.from_numpy(pad_lists([q.history_time for q in inputs],
                                                                    self.model.history_length))
        batch.update({k: torch.from_numpy(v) for k, v in context_batch([q.context for q in inputs], self.schema).items()})
        cold = [r for r, q in enumerate(inputs) if q.user_features is not None]
        for f in self.schema.user_features:
            col = getattr(self.model.user_tower, f"table_{f.name}")[user_idx].clone()
            if cold:
                given = [inputs[r].user_features.get(f.name, missing(f)) for r in cold]
                col[cold] = torch.as_tensor(feature_column(f, given), dtype=col.dtype)
            batch[f.name] = col
        return batch

    @torch.no_grad()
    def _user_reps(self, inputs: Sequence[QueryInput], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Context-free user representations (B, D): cache rows for known users with their stored history,
        the user tower for the others (unknown users, extended histories; trilinear / scoring_layer)."""
        extended = torch.as_tensor([q.extended for q in inputs], dtype=torch.bool)
        known = (batch["user_idx"] > 0) & ~extended
        reps = torch.empty(len(inputs), self.dim)
        if known.any():
            reps[known] = self.user_cache[batch["user_idx"][known]]
        if (~known).any():
            rows = (~known).nonzero().squeeze(1)
            sub = {k: v[rows] for k, v in batch.items()}
            overrides = {f.name: sub[f.name] for f in self.schema.user_features if f.name in sub}
            reps[rows] = self.model.user_tower(sub["user_idx"], sub["history"], None, overrides,
                                               sub.get("history_timestamp"))
        return reps

    @torch.no_grad()
    def encode(self, inputs: Sequence[QueryInput]) -> np.ndarray:
        """Query vectors float32 (B, D) whose inner products with item embeddings rank the catalogue
        (``scoring_layer``: the dot-product candidate stage)."""
        if not inputs:
            return np.zeros((0, self.dim), np.float32)
        batch = self._batch(inputs)
        if self.mode == ContextMode.USER_TOWER:
            q = self.model.query_embedding(batch)
        else:
            q = self.model.query_from_user(self._user_reps(inputs, batch), batch)
        return q.numpy().astype(np.float32, copy=False)

    @torch.no_grad()
    def rerank(self, inputs: Sequence[QueryInput], candidates: np.ndarray) -> np.ndarray:
        """``scoring_layer``: head scores float32 (B, R) of candidate item indices int64 (B, R) (-1 = none,
        scored -inf). Raises ValueError in other modes."""
        if self.mode != ContextMode.SCORING_LAYER:
            raise ValueError(f"rerank is defined for scoring_layer mode, not {self.mode.value}")
        cand = torch.as_tensor(np.asarray(candidates, np.int64))
        if cand.numel() == 0:
            return np.zeros(tuple(cand.shape), np.float32)
        batch = self._batch(inputs)
        reps = self.item_embeddings[cand.clamp(min=0)]                       # (B, R, D)
        head = self.model.head_scores(self._user_reps(inputs, batch), reps, batch)
        return head.masked_fill(cand < 0, float("-inf")).numpy().astype(np.float32, copy=False)

    def item_vectors(self, item_idx: np.ndarray) -> np.ndarray:
        """Item tower outputs float32 (M, D) of item indices (M,) (the vectors the index holds)."""
        return self.item_embeddings[torch.as_tensor(np.asarray(item_idx, np.int64))].numpy().astype(np.float32)
