"""Feature encoders: one encoder per feature kind, history pooling, the tower MLPs.

Every encoder maps a batch to a dense float32 tensor (B, out_dim). Index 0 is unknown/padding and
embeds to zero (``padding_idx=0``), and every other "missing" value also contributes zero: NaN numeric
values, NaN bucketized values (bucket 0) and all-zero vectors (the vector projection has no bias).
"""
from __future__ import annotations

import torch
from torch import nn

from .embeddings import sum_of_rows
from .schema import Feature


class FeatureEncoder(nn.Module):
    """Encodes a list of features of any kind (``twotower.model.schema.Feature``) and concatenates them.

    Per kind, input ``values[name]`` -> output columns (``dim`` = ``feature_embedding_dim``):

    * ``categorical``: (B,) int64 index -> ``nn.Embedding(cardinality, dim, padding_idx=0)``: dim.
    * ``numeric``: (B,) float32 raw value x -> ``(x - mean) / std`` with the Feature's ``mean`` / ``std``
      (train statistics, so the tower sees unit-scale inputs); NaN (missing) -> 0 after standardising,
      i.e. the mean: 1 column.
    * ``bucketized``: (B,) float32 raw value x -> bucket ``1 + #{b in boundaries: b <= x}`` =
      ``1 + torch.bucketize(x, boundaries, right=True)`` (``numpy.searchsorted(boundaries, x, "right") + 1``;
      x equal to a boundary goes to the bucket above it; compared in float32, the stored dtype), NaN ->
      bucket 0, embedded by ``nn.Embedding(len(boundaries) + 2, dim, padding_idx=0)``: dim. The
      boundaries are a non-persistent buffer ``boundaries_<name>`` (rebuilt from the schema that every
      checkpoint stores; moves with ``.to(device)``).
    * ``multi_hot`` / ``hashed_bag``: (B, L) int64 indices, 0-padded -> mean of the embeddings of the
      non-zero entries (``nn.EmbeddingBag(mode="mean", padding_idx=0)``; all padding -> zeros): dim.
    * ``vector``: (B, dim_f) float32 (e.g. a pretrained content embedding) -> ``nn.Linear(dim_f, dim,
      bias=False)``: dim. A learned projection rather than the raw values: every feature enters the MLP
      with the same width whatever ``dim_f`` is (a 512-d image embedding would otherwise dwarf the other
      inputs), and with no bias a missing vector (zeros) contributes zero like an unknown index.

    Output: (B, out_dim) float32 in feature order; ``out_dim`` = dim per non-numeric feature + 1 per
    numeric one. Raises KeyError (naming the feature) when ``values`` lacks a feature.
    """

    def __init__(self, features: tuple[Feature, ...] | list[Feature], dim: int):
        super().__init__()
        self.features = list(features)
        self.embeddings = nn.ModuleDict()
        self.out_dim = 0
        for f in self.features:
            if f.kind == "numeric":
                self.out_dim += 1
                continue
            if f.kind in ("categorical", "bucketized"):
                self.embeddings[f.name] = nn.Embedding(f.cardinality, dim, padding_idx=0)
            elif f.kind in ("multi_hot", "hashed_bag"):
                self.embeddings[f.name] = nn.EmbeddingBag(f.cardinality, dim, mode="mean", padding_idx=0)
            else:                                                              # vector
                self.embeddings[f.name] = nn.Linear(f.dim, dim, bias=False)
            if f.kind == "bucketized":
                self.register_buffer(f"boundaries_{f.name}", torch.tensor(f.boundaries, dtype=torch.float32),
                                     persistent=False)
            self.out_dim += dim

    def bucket(self, f: Feature, x: torch.Tensor) -> torch.Tensor:
        """Bucket indices (B,) int64 of raw values x (B,) of bucketized feature ``f`` (see the class docstring)."""
        x = x.float()
        b = torch.bucketize(x, getattr(self, f"boundaries_{f.name}"), right=True) + 1
        return torch.where(torch.isnan(x), torch.zeros_like(b), b)

    def encode(self, f: Feature, v: torch.Tensor) -> torch.Tensor:
        """One feature's columns: (B, 1) for numeric, (B, dim) otherwise."""
        if f.kind == "numeric":
            z = (v.float() - f.mean) / f.std
            return torch.where(torch.isnan(z), torch.zeros_like(z), z).unsqueeze(-1)
        if f.kind == "bucketized":
            return self.embeddings[f.name](self.bucket(f, v))
        if f.kind == "vector":
            return self.embeddings[f.name](v.float())
        return self.embeddings[f.name](v.long())

    def forward(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for f in self.features:
            if f.name not in values:
                raise KeyError(f"feature {f.name!r} ({f.kind}) is missing from the batch")
            parts.append(self.encode(f, values[f.name]))
        if not parts:
            return torch.zeros(0)
        return torch.cat(parts, dim=-1)


class HistoryPooling(nn.Module):
    """Pools the embeddings (rows of ``table``, dim E) of a user's last N items ``history`` (B, N) int64,
    0-padded, into (B, E) float32.

    ``mean``: average over non-padding positions (one ``F.embedding_bag``, :func:`sum_of_rows`).
    ``attention``: softmax_j(q . W (h_j + p_j) / sqrt(E)) weighted sum of h_j, with a learned query q and
    learned position embeddings p_j (position 0 = most recent item, so recency can matter); attention
    pooling as in YouTube/DIN-style user models, without the target item so the user tower stays
    independent of the item tower. Empty histories give zeros.
    """

    def __init__(self, dim: int, mode: str, max_length: int = 0):
        super().__init__()
        self.mode = mode
        if mode == "attention":
            self.key = nn.Linear(dim, dim, bias=False)
            self.query = nn.Parameter(torch.zeros(dim))
            self.position = nn.Embedding(max(max_length, 1), dim)
            nn.init.normal_(self.position.weight, std=0.01)

    def forward(self, table: nn.Embedding, history: torch.Tensor) -> torch.Tensor:
        mask = (history > 0).unsqueeze(-1)                       # (B, N, 1)
        if self.mode == "mean":
            return sum_of_rows(table, history) / mask.sum(dim=1).clamp(min=1)
        emb = table(history)                                     # (B, N, E)
        keys = self.key(emb + self.position.weight[: emb.shape[1]])
        logits = (keys @ self.query) / emb.shape[-1] ** 0.5                 # (B, N)
        logits = logits.masked_fill(~mask.squeeze(-1), float("-inf"))
        weights = torch.softmax(logits, dim=1).nan_to_num(0.0)   # all-padding rows -> zeros
        return (weights.unsqueeze(-1) * emb).sum(dim=1)


def mlp(in_dim: int, hidden: list[int], out_dim: int, activation: str, dropout: float,
        layer_norm: bool) -> nn.Sequential:
    """Linear -> [LayerNorm] -> activation -> Dropout for each hidden size, then Linear to ``out_dim``."""
    act = {"relu": nn.ReLU, "gelu": nn.GELU}[activation]
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers.append(nn.Linear(d, h))
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        layers += [act(), nn.Dropout(dropout)]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)
