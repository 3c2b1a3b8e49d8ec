"""The two-tower model: user tower, item tower and the three context modes (see ``ContextMode``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .config import ContextMode, ModelConfig
from .features import FeatureEncoder, mlp
from .schema import DatasetSchema
from .sequence import history_length, uses_history_time
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
    For a sequence batch (every position, :meth:`TwoTowerModel.forward`), B is P, the batch's valid
    positions (``mask``) in row-major order.
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
    ``twotower.model.features.FeatureEncoder``. With ``history_pooling: transformer`` the history is N =
    ``history_length`` (= ``max_sequence_length``) items, and with ``time_gap_buckets`` the batch also
    has ``history_timestamp`` (B, N) int64, the history's timestamps.

    Sequence batches (training on every position, ``examples: sequence``; cut by
    ``twotower.data.sequences.cut_windows``): ``user_idx`` (B,) int64, ``items`` (B, L) int64 (a window
    of the user's items, oldest first, 0-padded on the right), ``targets`` (B, L) int64 (the next item
    of each position; 0 = none), ``positions`` (B, L) int64 (the target's position in the user's whole
    sequence), ``timestamps`` (B, L) int64 (of ``items``), ``mask`` (B, L) bool (``targets > 0``), each
    context feature per position, i.e. of the target event ((B, L), multi_hot (B, L, M)), optionally
    ``weight`` (B, L) float32.
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
                                    ctx_dim if self.mode == ContextMode.USER_TOWER else 0, self.item_tower)
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

    @property
    def history_length(self) -> int:
        """N, the history items a per-event example carries for this model (``model.sequence.history_length``)."""
        return history_length(self.schema, self.cfg)

    @property
    def uses_history_time(self) -> bool:
        """True when per-event batches need ``history_timestamp`` (time-gap buckets)."""
        return uses_history_time(self.cfg)

    # ---- pieces -------------------------------------------------------------------------------------
    def context_input(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Encoded context (B, C), or (B, L, C) for a sequence batch; None when the schema has no context."""
        if not self.has_context:
            return None
        if not is_sequence_batch(batch):
            return self.context_encoder(batch)
        b, length = batch["targets"].shape
        flat = {f.name: batch[f.name].reshape(b * length, *batch[f.name].shape[2:]) for f in self.schema.context_features}
        return self.context_encoder(flat).view(b, length, -1)

    def user_representation(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """User tower output (B, D), or (B, L, D) for a sequence batch; includes the context only in
        ``user_tower`` mode."""
        ctx = self.context_input(batch) if self.mode == ContextMode.USER_TOWER else None
        if is_sequence_batch(batch):
            return self.user_tower.forward_sequence(batch["user_idx"], batch["items"], ctx, batch.get("timestamps"))
        overrides = {f.name: batch[f.name] for f in self.schema.user_features if f.name in batch}
        return self.user_tower(batch["user_idx"], batch["history"], ctx, overrides, batch.get("history_timestamp"))

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
        """Item tower output (M, D) for item indices (M,) int64; context-free, so precomputable.

        The tower runs once per distinct index (a sequence batch repeats popular items thousands of
        times); rows of equal indices are equal (in training they share one dropout mask)."""
        unique, inverse = torch.unique(item_idx, return_inverse=True)
        return self.item_tower(unique)[inverse]

    def user_embeddings(self, user_idx: torch.Tensor, history: torch.Tensor,
                        history_time: torch.Tensor | None = None) -> torch.Tensor:
        """Context-free per-user representation (B, D) to cache offline (trilinear, scoring_layer);
        ``history_time`` (B, N): the history's timestamps (time-gap buckets only).

        Raises:
            ContextDependentError: in ``user_tower`` mode with context features.
        """
        if self.mode == ContextMode.USER_TOWER and self.has_context:
            raise ContextDependentError(
                "user_embeddings(): in user_tower mode the user representation depends on the request "
                "context; compute query_embedding(batch) per request instead")
        return self.user_tower(user_idx, history, None, history_time=history_time)

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
        """Representations for a training batch; see :class:`TowerOutput`. ``extra_item_idx``: (M,) int64.

        A sequence batch gives the query and positive of every valid position (``mask``), (P, D) each.

        Raises:
            ValueError: a sequence batch in ``scoring_layer`` mode (its head is trained per event).
        """
        if is_sequence_batch(batch):
            return self._forward_sequence(batch, extra_item_idx)
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

    def _forward_sequence(self, batch: dict[str, torch.Tensor], extra_item_idx: torch.Tensor | None) -> TowerOutput:
        if self.mode == ContextMode.SCORING_LAYER:
            raise ValueError("sequence batches (examples: sequence) train user_tower or trilinear models, "
                             "not scoring_layer")
        mask = batch["mask"]
        query = self.query_from_user(self.user_representation(batch), batch)           # (B, L, D)
        extra = self.item_embedding(extra_item_idx) if extra_item_idx is not None else None
        return TowerOutput(query=query[mask], items=self.item_embedding(batch["targets"][mask]), extra_items=extra)

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


def is_sequence_batch(batch: dict) -> bool:
    """True for a sequence batch (every position of windows; has ``targets``), False for per-event rows."""
    return "targets" in batch
