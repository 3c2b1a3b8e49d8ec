"""The causal self-attention history encoder (``history_pooling: transformer``).

A user's items in time order x_0 .. x_{L-1} (left-aligned, 0-padded on the right) are embedded and
encoded by pre-norm Transformer blocks with a causal mask (SASRec, Kang & McAuley, "Self-Attentive
Sequential Recommendation", ICDM 2018, sec. III; pre-norm as in GPT-2, Radford et al. 2019)::

    h^0_t = e(x_t) + P_t [+ G_{gap(t)}]                   e: item ID embedding shared with the item tower
                                                          (or the item tower's representation, projected)
    a     = h + Dropout(MHA(LN(h))_causal)                 every position t attends to positions <= t
    h'    = a + Dropout(W_2 GELU(W_1 LN(a)))               W_1: E -> 4E, W_2: 4E -> E
    out_t = LN(h^K_t)                                      K = sequence_layers

``out_t`` summarises x_0..x_t and is the history vector of the query that predicts x_{t+1}: one pass
gives a query at every position (training on every position, ``examples: sequence``), and a per-event
example (``history``: the items strictly before the target, most recent first) takes ``out`` at its
last item (:func:`chronological` turns the history into this layout). Positions count from the oldest
item of the window (P_0 = the first item it holds), so the t-th item of a training window and of an
evaluation history of the same user share P_t. Padding sits after every real item and so never reaches
a real position through the causal mask.

Optional time gaps (``time_gap_buckets`` = G > 0): G_{gap(t)} embeds ``1 + min(floor(log2(1 + s)), G - 2)``
of the seconds s between x_{t-1} and x_t (bucket 0, embedding zero: the first item and padding).

Initialisation: linear layers N(0, 0.02) with zero biases, the residual output projections (attention
output, W_2) N(0, 0.02 / sqrt(2K)) (GPT-2's scaled residual init), LayerNorm (1, 0); the position and
time-gap embeddings N(0, 1), the scale of the item ID embeddings they are added to (``nn.Embedding``'s
default), so that order is visible from the first step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .schema import DatasetSchema

INIT_STD = 0.02


def history_length(schema: DatasetSchema, cfg: ModelConfig) -> int:
    """Items of history a per-event example carries for this model: ``cfg.max_sequence_length`` for the
    transformer encoder, else the dataset's ``schema.history_length`` (what mean / attention pool)."""
    return cfg.max_sequence_length if cfg.history_pooling == "transformer" else schema.history_length


def uses_history_time(cfg: ModelConfig) -> bool:
    """True when the model reads the history's timestamps (``history_timestamp``; time-gap buckets)."""
    return cfg.history_pooling == "transformer" and cfg.time_gap_buckets > 0


def chronological(history: torch.Tensor, max_length: int, values: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per-event history (B, N) int64, most recent first, 0-padded at the end -> the encoder's layout.

    Keeps the ``max_length`` most recent items. Returns ``(items (B, L), values (B, L) or None, lengths
    (B,))``, L = min(N, max_length): items oldest first, left-aligned, 0-padded on the right;
    ``values`` (B, N) (e.g. the history's timestamps) reordered alongside (0 at padding).
    """
    h = history[:, :max_length]
    lengths = (h > 0).sum(dim=1)
    j = torch.arange(h.shape[1], device=h.device)
    src = (lengths.unsqueeze(1) - 1 - j).clamp(min=0)                                  # (B, L)
    keep = j < lengths.unsqueeze(1)
    items = torch.where(keep, h.gather(1, src), torch.zeros_like(h))
    if values is not None:
        v = values[:, :max_length]
        values = torch.where(keep, v.gather(1, src), torch.zeros_like(v))
    return items, values, lengths


def time_gap_buckets(timestamps: torch.Tensor, items: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Buckets (B, L) int64 of the gaps between consecutive items (module docstring): timestamps (B, L)
    int64 seconds and items (B, L) in the encoder's layout; 0 at position 0 and at padding."""
    gap = (timestamps[:, 1:] - timestamps[:, :-1]).clamp(min=0).double()
    bucket = (1 + torch.floor(torch.log2(1 + gap))).clamp(max=num_buckets - 1).long()
    bucket = torch.cat([torch.zeros_like(bucket[:, :1]), bucket], dim=1)
    return torch.where(items > 0, bucket, torch.zeros_like(bucket))


class CausalBlock(nn.Module):
    """One pre-norm Transformer block with causal multi-head self-attention: (B, L, E) -> (B, L, E)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.ff1, self.ff2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                             dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.out(att.transpose(1, 2).reshape(b, length, width)))
        return x + self.drop(self.ff2(F.gelu(self.ff1(self.norm2(x)))))


class SequenceEncoder(nn.Module):
    """Causal encoder (module docstring): embedded items (B, L, E) -> outputs (B, L, E) float32.

    Args:
        width: E (= ``item_embedding_dim``). layers / heads / dropout: ``sequence_layers`` /
            ``sequence_heads`` / ``sequence_dropout``. max_length: positions (``max_sequence_length``).
        time_buckets: G, the time-gap buckets (0 = no time-gap embedding).
    """

    def __init__(self, width: int, layers: int, heads: int, dropout: float, max_length: int, time_buckets: int = 0):
        super().__init__()
        self.max_length, self.time_buckets = max_length, time_buckets
        self.position = nn.Embedding(max_length, width)
        self.time = nn.Embedding(time_buckets, width, padding_idx=0) if time_buckets > 0 else None
        self.input_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(CausalBlock(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=INIT_STD)
                nn.init.zeros_(m.bias)
        for blk in self.blocks:
            for proj in (blk.out, blk.ff2):
                nn.init.normal_(proj.weight, std=INIT_STD / math.sqrt(2 * layers))
        nn.init.normal_(self.position.weight, std=1.0)
        if self.time is not None:
            nn.init.normal_(self.time.weight, std=1.0)
            with torch.no_grad():
                self.time.weight[0] = 0.0

    def forward(self, emb: torch.Tensor, items: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """emb (B, L, E) of items (B, L) int64 (oldest first, 0-padded on the right), timestamps (B, L)
        int64 seconds (needed when ``time_buckets`` > 0) -> (B, L, E).

        Raises:
            ValueError: L > max_length, or time buckets without ``timestamps``.
        """
        length = items.shape[1]
        if length > self.max_length:
            raise ValueError(f"sequence of length {length} is longer than max_sequence_length {self.max_length}")
        x = emb + self.position.weight[:length]
        if self.time is not None:
            if timestamps is None:
                raise ValueError("time_gap_buckets > 0: the batch needs the history's timestamps "
                                 "(history_timestamp / timestamps)")
            x = x + self.time(time_gap_buckets(timestamps, items, self.time_buckets))
        x = self.input_drop(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def last_position(out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``out`` (B, L, E) at each row's last item (``lengths`` (B,) int64) -> (B, E); zeros where the length
    is 0 (an empty history, like mean pooling)."""
    rows = torch.arange(out.shape[0], device=out.device)
    picked = out[rows, (lengths - 1).clamp(min=0)]
    return picked * (lengths > 0).unsqueeze(1).to(picked.dtype)
