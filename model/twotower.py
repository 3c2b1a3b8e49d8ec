"""The two-tower model: user tower, item tower and the three context modes (see ``ContextMode``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .config import ContextMode, ModelConfig
from .features import FeatureEncoder, mlp
from .schema import DatasetSchema
from .towers import ItemTower, UserTower

HEAD_CANDIDATES = 64  # scoring_layer training: the head scores the positive + 63 sampled candidates per row


class ContextDependentError(RuntimeError):
    """User representations depend on the request context (``user_tower`` mode with context features),
    so there is no per-user embedding to cache; compute the query per request instead."""


@dataclass
class TowerOutput:
    """What one forward pass produces for a batch of B (user, item, context) rows.

    query: (B, D) float32, the vector scored against item representations by dot product.
    items: (B, D) float32, representations of the batch's positive items.
    extra_items: (M, D) float32 or None, representations of extra sampled negatives.
    head_logits: (B, C) float32 or None (``scoring_layer`` in training): head scores of candidate
        columns, column 0 the positive. head_candidates: (B, C) int64 item indices of those columns.
    """

    query: torch.Tensor
    items: torch.Tensor
    extra_items: torch.Tensor | None = None
    head_logits: torch.Tensor | None = None
    head_candidates: torch.Tensor | None = None


class TwoTowerModel(nn.Module):
    """Two-tower retrieval model over a prepared dataset's schema.

    Args:
        schema: the dataset schema (vocabulary sizes, features, context columns).
        cfg: architecture and loss hyperparameters.
        user_table / item_table: per-index feature arrays from ``twotower.data.tables.load_feature_tables``
            (held as buffers so checkpoints are self-contained); None gives zero tables to be filled by
            ``load_state_dict``. ``item_table["train_count"]`` (num_items,) sets the logQ buffer ``log_q``.

    Batches are dicts of tensors: ``user_idx`` (B,) int64, ``item_idx`` (B,) int64, ``history`` (B, N)
    int64, one tensor per context feature (numeric / bucketized (B,) float32 raw values, categorical (B,)
    int64, multi_hot (B, L) int64; see ``twotower.model.batch.feature_column``), optionally ``weight``
    (B,) float32 (read by the loss only) and, per user feature, an override of the user table's value in
    the same per-kind dtype (cold start). Every feature kind is encoded by
    ``twotower.model.features.FeatureEncoder``.
    """

    def __init__(self, schema: DatasetSchema, cfg: ModelConfig, user_table: dict[str, np.ndarray] | None = None,
                 item_table: dict[str, np.ndarray] | None = None):
        super().__init__()
        self.schema, self.cfg = schema, cfg
        self.mode = ContextMode(cfg.context_mode)
        self.has_context = len(schema.context_features) > 0
        d = cfg.final_embedding_dim
        self.context_encoder = FeatureEncoder(schema.context_features, cfg.feature_embedding_dim)
        ctx_dim = self.context_encoder.out_dim
        self.item_tower = ItemTower(schema, cfg, item_table)
        self.user_tower = UserTower(schema, cfg, user_table, self.item_tower.id_embedding,
                                    ctx_dim if self.mode == ContextMode.USER_TOWER else 0)
        if self.has_context and self.mode == ContextMode.TRILINEAR:
            self.context_projection = nn.Linear(ctx_dim, d)
            nn.init.normal_(self.context_projection.weight, std=0.01)
            nn.init.ones_(self.context_projection.bias)     # starts as the identity modulation
        if self.mode == ContextMode.SCORING_LAYER:
            self.context_projection = nn.Linear(ctx_dim, d) if self.has_context else None
            self.scoring_head = mlp(4 * d if self.has_context else 3 * d, cfg.scoring_hidden_dims, 1,
                                    cfg.activation, 0.0, False)
        counts = torch.zeros(schema.num_items, dtype=torch.float64)
        if item_table is not None and "train_count" in item_table:
            counts = torch.as_tensor(np.asarray(item_table["train_count"]), dtype=torch.float64)
        prob = counts / counts.sum().clamp(min=1.0)
        self.register_buffer("item_prob", prob.float())   # unigram sampling probability p_j of each item

    # ---- pieces -------------------------------------------------------------------------------------
    def context_input(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Encoded context (B, C) or None when the schema has no context features."""
        return self.context_encoder(batch) if self.has_context else None

    def user_representation(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """User tower output (B, D); includes the context only in ``user_tower`` mode."""
        ctx = self.context_input(batch) if self.mode == ContextMode.USER_TOWER else None
        overrides = {f.name: batch[f.name] for f in self.schema.user_features if f.name in batch}
        return self.user_tower(batch["user_idx"], batch["history"], ctx, overrides)

    def context_embedding(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``trilinear``: ctx_emb (B, D) that multiplies the cached user representation elementwise."""
        if self.mode != ContextMode.TRILINEAR or not self.has_context:
            raise ValueError(f"context_embedding is defined for trilinear mode with context, not {self.mode.value}")
        return self.context_projection(self.context_input(batch))

    def query_from_user(self, user_rep: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Query vector (B, D) from a user representation: trilinear multiplies by ctx_emb, others pass."""
        if self.mode == ContextMode.TRILINEAR and self.has_context:
            return user_rep * self.context_embedding(batch)
        return user_rep

    def query_embedding(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) vector whose dot product with ``item_embedding`` rows retrieves candidates."""
        return self.query_from_user(self.user_representation(batch), batch)

    def item_embedding(self, item_idx: torch.Tensor) -> torch.Tensor:
        """Item tower output (M, D) for item indices (M,) int64; context-free, so precomputable."""
        return self.item_tower(item_idx)

    def user_embeddings(self, user_idx: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Context-free per-user representation (B, D) to cache offline (trilinear, scoring_layer).

        Raises:
            ContextDependentError: in ``user_tower`` mode with context features.
        """
        if self.mode == ContextMode.USER_TOWER and self.has_context:
            raise ContextDependentError(
                "user_embeddings(): in user_tower mode the user representation depends on the request "
                "context; compute query_embedding(batch) per request instead")
        return self.user_tower(user_idx, history, None)

    def head_scores(self, user_rep: torch.Tensor, item_reps: torch.Tensor,
                    batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``scoring_layer``: MLP([u, v, u*v, ctx]) for user_rep (B, D) and item_reps (B, C, D) -> (B, C)."""
        u = user_rep.unsqueeze(1).expand_as(item_reps)
        parts = [u, item_reps, u * item_reps]
        if self.has_context:
            parts.append(self.context_projection(self.context_input(batch)).unsqueeze(1).expand_as(item_reps))
        return self.scoring_head(torch.cat(parts, dim=-1)).squeeze(-1)

    # ---- training forward (goes through DDP) ---------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], extra_item_idx: torch.Tensor | None = None) -> TowerOutput:
        """Representations for a training batch; see :class:`TowerOutput`. ``extra_item_idx``: (M,) int64."""
        user_rep = self.user_representation(batch)
        items = self.item_embedding(batch["item_idx"])
        extra = self.item_embedding(extra_item_idx) if extra_item_idx is not None else None
        out = TowerOutput(query=self.query_from_user(user_rep, batch), items=items, extra_items=extra)
        if self.mode == ContextMode.SCORING_LAYER:
            pool = items if extra is None else torch.cat([items, extra])
            pool_idx = batch["item_idx"] if extra is None else torch.cat([batch["item_idx"], extra_item_idx])
            b, c = items.shape[0], min(HEAD_CANDIDATES, pool.shape[0])
            cols = torch.randint(0, pool.shape[0], (b, c - 1), device=items.device)
            cand = torch.cat([batch["item_idx"].unsqueeze(1), pool_idx[cols]], dim=1)              # (B, C)
            reps = torch.cat([items.unsqueeze(1), pool[cols]], dim=1)                      # (B, C, D)
            out.head_logits, out.head_candidates = self.head_scores(user_rep, reps, batch), cand
        return out

    # ---- inference -----------------------------------------------------------------------------------
    @torch.no_grad()
    def all_item_embeddings(self, batch_size: int = 8192) -> torch.Tensor:
        """Item representations of the whole catalogue (num_items, D), row 0 the unknown item."""
        device = self.item_prob.device
        idx = torch.arange(self.schema.num_items, device=device)
        return torch.cat([self.item_embedding(idx[i:i + batch_size]) for i in range(0, len(idx), batch_size)])

    @torch.no_grad()
    def rank_scores(self, batch: dict[str, torch.Tensor], item_embs: torch.Tensor) -> torch.Tensor:
        """Scores (B, num_items) whose order is the model's ranking of the catalogue for each row.

        Dot-product modes: query @ item_embs.T. ``scoring_layer``: the top ``cfg.rerank_depth`` items by
        dot product are re-scored by the head and placed above all others (which keep dot order).
        """
        user_rep = self.user_representation(batch)
        dot = self.query_from_user(user_rep, batch) @ item_embs.T
        if self.mode != ContextMode.SCORING_LAYER:
            return dot
        depth = min(self.cfg.rerank_depth, dot.shape[1])
        top = dot.topk(depth, dim=1).indices                                            # (B, R)
        head = self.head_scores(user_rep, item_embs[top], batch)                        # (B, R)
        offset = dot.max().abs() + head.abs().max() + 1.0
        return (dot - offset).scatter(1, top, head + offset)
