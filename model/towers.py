"""The two towers. Each maps a batch of ids (+ features looked up from tables it holds) to (B, D)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .batch import feature_column
from .config import ModelConfig
from .embeddings import id_embedding
from .features import FeatureEncoder, HistoryPooling, mlp
from .schema import DatasetSchema, Feature
from .sequence import SequenceEncoder, chronological, last_position


def table_spec(f: Feature) -> tuple[tuple[int, ...], torch.dtype]:
    """Per-row shape and dtype of feature ``f``'s table: categorical () int64; numeric / bucketized ()
    float32 (raw values, NaN = missing); vector (dim,) float32; multi_hot / hashed_bag (max_length,) int64."""
    if f.kind == "categorical":
        return (), torch.int64
    if f.kind in ("numeric", "bucketized"):
        return (), torch.float32
    if f.kind == "vector":
        return (f.dim,), torch.float32
    return (max(f.max_length, 1),), torch.int64


def _register_table(module: nn.Module, features: tuple[Feature, ...], rows: int,
                    table: dict[str, np.ndarray] | None) -> None:
    """Register each feature column as a buffer ``table_<name>`` of shape (rows, *row shape) and dtype of
    :func:`table_spec` (numeric / bucketized: raw float32 values, standardised / bucketized by the
    encoder; vector: float32 (rows, dim), missing rows zeros; lists: int64 (rows, max_length), 0-padded).

    The tables travel inside the state dict, so a checkpoint is self-contained for indexing and serving.
    With ``table=None`` the buffers are zeros of the right shape (to be filled by ``load_state_dict``).

    Columns are converted by :func:`twotower.model.batch.feature_column` (a vector column may be rows
    of ``dim`` values, None for missing).

    Raises:
        ValueError: a column of the wrong shape (names the feature, the shape and the expected one).
    """
    for f in features:
        row_shape, dtype = table_spec(f)
        shape = (rows, *row_shape)
        value = torch.zeros(shape, dtype=dtype)
        if table is not None:
            arr = torch.as_tensor(feature_column(f, table[f.name]), dtype=dtype)
            if tuple(arr.shape) != shape:
                raise ValueError(f"feature table {f.name!r} has shape {tuple(arr.shape)}, expected {shape}")
            value = arr
        module.register_buffer(f"table_{f.name}", value)


def _lookup(module: nn.Module, features: tuple[Feature, ...], idx: torch.Tensor,
            overrides: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    overrides = overrides or {}
    return {f.name: overrides[f.name] if f.name in overrides else getattr(module, f"table_{f.name}")[idx]
            for f in features}


def zero_cold_rows(embedding: nn.Embedding, train_count: np.ndarray) -> None:
    """Zero the rows of ``embedding`` (one row per item) whose ``train_count`` (num_items,) is 0.

    Only the initial value: a cold item drawn as an extra uniform negative (``num_negatives``) still gets
    gradient steps during training, like any negative.
    """
    cold = torch.as_tensor(np.flatnonzero(np.asarray(train_count) == 0), dtype=torch.int64)
    with torch.no_grad():
        embedding.weight[cold] = 0.0


class ItemTower(nn.Module):
    """item_idx (M,) int64 -> item representation (M, D) float32.

    Input = [item ID embedding, item side features (genres multi-hot, year, hashed title tokens, ...)]
    -> MLP -> D, L2-normalised when ``cfg.l2_normalize``. The ID embedding (``id_embedding``) is also
    used by the user tower to embed the history, so both towers speak of items in one space. It has one
    row per item, or ``cfg.item_id_buckets`` hashed rows (``twotower.model.embeddings``), and gives
    sparse gradients when ``cfg.sparse_id_embeddings``; likewise the user tower's with ``user_id_buckets``.

    Cold items (``item_table["train_count"] == 0``: in the catalogue, never trained on) start with a zero ID
    row (:func:`zero_cold_rows`), so their representation comes from their features, not from a random
    vector no gradient of a positive ever moved. Hashed ID tables (``item_id_buckets``) are left alone:
    their rows are shared with trained items.
    """

    def __init__(self, schema: DatasetSchema, cfg: ModelConfig, item_table: dict[str, np.ndarray] | None):
        super().__init__()
        self.features = schema.item_features
        self.id_embedding = id_embedding(schema.num_items, cfg.item_embedding_dim, cfg.item_id_buckets,
                                         cfg.sparse_id_embeddings)
        if item_table is not None and "train_count" in item_table and cfg.item_id_buckets is None:
            zero_cold_rows(self.id_embedding, np.asarray(item_table["train_count"]))
        self.encoder = FeatureEncoder(self.features, cfg.feature_embedding_dim)
        _register_table(self, self.features, schema.num_items, item_table)
        self.mlp = mlp(cfg.item_embedding_dim + self.encoder.out_dim, cfg.hidden_dims, cfg.final_embedding_dim,
                       cfg.activation, cfg.dropout, cfg.layer_norm)
        self.normalize = cfg.l2_normalize

    def forward(self, item_idx: torch.Tensor) -> torch.Tensor:
        parts = [self.id_embedding(item_idx)]
        if self.features:
            parts.append(self.encoder(_lookup(self, self.features, item_idx)))
        out = self.mlp(torch.cat(parts, dim=-1))
        return F.normalize(out, dim=-1) if self.normalize else out


class UserTower(nn.Module):
    """(user_idx (B,), history (B, N), [context (B, C)]) -> user representation (B, D) float32.

    Input = [user ID embedding, user side features, history vector, context features when
    ``with_context``] -> MLP -> D, L2-normalised when configured. The history vector is the mean /
    attention pooling of the history's item ID embeddings (shared with the item tower), or with
    ``history_pooling: transformer`` the causal encoder's output at the last history item
    (``twotower.model.sequence``; its inputs are the shared item ID embeddings, or with
    ``sequence_input: item_tower`` the item tower's representations through a linear map D -> E).
    User side features come from the table held by the tower, or from ``overrides`` (cold start: a
    request supplies features for an unknown user, whose ID index is 0 and embeds to zero).

    :meth:`forward_sequence` is the every-position form of the same tower (sequence training): items
    (B, L) oldest first -> (B, L, D), position t's row equal to :meth:`forward` on the history x_t..x_0.
    """

    def __init__(self, schema: DatasetSchema, cfg: ModelConfig, user_table: dict[str, np.ndarray] | None,
                 item_id_embedding: nn.Embedding, context_dim: int, item_tower: ItemTower | None = None):
        super().__init__()
        self.features = schema.user_features
        self.id_embedding = id_embedding(schema.num_users, cfg.user_embedding_dim, cfg.user_id_buckets,
                                         cfg.sparse_id_embeddings)
        self.encoder = FeatureEncoder(self.features, cfg.feature_embedding_dim)
        _register_table(self, self.features, schema.num_users, user_table)
        self.item_id_embedding = item_id_embedding
        self.pooling = HistoryPooling(cfg.item_embedding_dim, cfg.history_pooling, schema.history_length) \
            if cfg.history_pooling in ("mean", "attention") else None
        self.sequence = None
        if cfg.history_pooling == "transformer":
            self.sequence = SequenceEncoder(cfg.item_embedding_dim, cfg.sequence_layers, cfg.sequence_heads,
                                            cfg.sequence_dropout, cfg.max_sequence_length, cfg.time_gap_buckets)
            if cfg.sequence_input == "item_tower":
                self._item_tower = [item_tower]        # a reference, not a submodule: its weights stay in item_tower.*
                self.item_input = nn.Linear(cfg.final_embedding_dim, cfg.item_embedding_dim)
        in_dim = cfg.user_embedding_dim + self.encoder.out_dim + context_dim
        in_dim += cfg.item_embedding_dim if cfg.history_pooling != "none" else 0
        self.mlp = mlp(in_dim, cfg.hidden_dims, cfg.final_embedding_dim, cfg.activation, cfg.dropout,
                       cfg.layer_norm)
        self.normalize = cfg.l2_normalize

    def embed_items(self, items: torch.Tensor) -> torch.Tensor:
        """Encoder / pooling inputs (..., E) of item indices (...) int64 (see the class docstring)."""
        if self.sequence is not None and hasattr(self, "item_input"):
            return self.item_input(self._item_tower[0](items.reshape(-1)).view(*items.shape, -1))
        return self.item_id_embedding(items)

    def history_vector(self, history: torch.Tensor, history_time: torch.Tensor | None = None) -> torch.Tensor:
        """(B, E) summary of history (B, N) (most recent first, 0-padded; ``history_time`` (B, N) its
        timestamps, read only with time-gap buckets)."""
        if self.sequence is None:
            return self.pooling(self.item_id_embedding, history)
        items, times, lengths = chronological(history, self.sequence.max_length, history_time)
        return last_position(self.sequence(self.embed_items(items), items, times), lengths)

    def _user_parts(self, user_idx: torch.Tensor, overrides: dict[str, torch.Tensor] | None) -> list[torch.Tensor]:
        parts = [self.id_embedding(user_idx)]
        if self.features:
            parts.append(self.encoder(_lookup(self, self.features, user_idx, overrides)))
        return parts

    def _head(self, parts: list[torch.Tensor]) -> torch.Tensor:
        out = self.mlp(torch.cat(parts, dim=-1))
        return F.normalize(out, dim=-1) if self.normalize else out

    def forward(self, user_idx: torch.Tensor, history: torch.Tensor, context: torch.Tensor | None = None,
                overrides: dict[str, torch.Tensor] | None = None,
                history_time: torch.Tensor | None = None) -> torch.Tensor:
        parts = self._user_parts(user_idx, overrides)
        if self.pooling is not None or self.sequence is not None:
            parts.append(self.history_vector(history, history_time))
        if context is not None:
            parts.append(context)
        return self._head(parts)

    def forward_sequence(self, user_idx: torch.Tensor, items: torch.Tensor, context: torch.Tensor | None = None,
                         timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """Every position at once: user_idx (B,), items (B, L) int64 oldest first (0-padded on the right),
        context (B, L, C) of each position's target event or None, timestamps (B, L) of the items
        -> (B, L, D). Raises ValueError without the transformer encoder."""
        if self.sequence is None:
            raise ValueError("forward_sequence needs history_pooling: transformer")
        length = items.shape[1]
        parts = [p.unsqueeze(1).expand(-1, length, -1) for p in self._user_parts(user_idx, None)]
        parts.append(self.sequence(self.embed_items(items), items, timestamps))
        if context is not None:
            parts.append(context)
        return self._head(parts)
