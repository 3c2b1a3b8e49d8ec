"""Feature encoders: categorical and bag embeddings, history pooling, context encoding.

Every encoder maps a batch to a dense float32 tensor (B, out_dim); index 0 is unknown/padding and
embeds to zero (``padding_idx=0``), so an unknown value contributes nothing.
"""
from __future__ import annotations

import torch
from torch import nn

from .schema import Feature


class FeatureEncoder(nn.Module):
    """Embeds a list of categorical / multi_hot / hashed_bag / numeric features and concatenates them.

    Input: ``values[name]`` is (B,) int64 for categorical, (B, L) int64 for bags (0-padded), (B,) float32
    for numeric. Output: (B, out_dim) float32, with ``dim`` per embedded feature and 1 per numeric one.
    Bags are mean-pooled over their non-zero entries (``nn.EmbeddingBag(mode="mean", padding_idx=0)``).
    """

    def __init__(self, features: tuple[Feature, ...] | list[Feature], dim: int):
        super().__init__()
        self.features = list(features)
        self.embeddings = nn.ModuleDict()
        self.out_dim = 0
        for f in self.features:
            if f.kind == "categorical":
                self.embeddings[f.name] = nn.Embedding(f.cardinality, dim, padding_idx=0)
                self.out_dim += dim
            elif f.kind in ("multi_hot", "hashed_bag"):
                self.embeddings[f.name] = nn.EmbeddingBag(f.cardinality, dim, mode="mean", padding_idx=0)
                self.out_dim += dim
            else:
                self.out_dim += 1

    def forward(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for f in self.features:
            v = values[f.name]
            if f.kind == "numeric":
                parts.append(v.float().unsqueeze(-1))
            else:
                parts.append(self.embeddings[f.name](v.long()))
        if not parts:
            return torch.zeros(0)
        return torch.cat(parts, dim=-1)


class HistoryPooling(nn.Module):
    """Pools the embeddings of a user's last N items (B, N, E) into (B, E).

    ``mean``: average over non-padding positions. ``attention``: softmax_j(q . W (h_j + p_j) / sqrt(E))
    weighted sum of h_j, with a learned query q and learned position embeddings p_j (position 0 = most
    recent item, so recency can matter); attention pooling as in YouTube/DIN-style user models, without
    the target item so the user tower stays independent of the item tower. Empty histories give zeros.
    """

    def __init__(self, dim: int, mode: str, max_length: int = 0):
        super().__init__()
        self.mode = mode
        if mode == "attention":
            self.key = nn.Linear(dim, dim, bias=False)
            self.query = nn.Parameter(torch.zeros(dim))
            self.position = nn.Embedding(max(max_length, 1), dim)
            nn.init.normal_(self.position.weight, std=0.01)

    def forward(self, emb: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        mask = (history > 0).unsqueeze(-1)                       # (B, N, 1)
        if self.mode == "mean":
            total = (emb * mask).sum(dim=1)
            return total / mask.sum(dim=1).clamp(min=1)
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
