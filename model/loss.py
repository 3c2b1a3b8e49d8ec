"""The training loss, every term in one place.

In-batch sampled softmax (Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
Recommendations", RecSys 2019, sec. 3-4). For query i and candidate items j (the batch's positives,
optionally gathered from all workers, plus M uniformly sampled extra negatives):

    logit[i, j] = <q_i, v_j> / temperature - log Q_j            (logQ correction, eq. (3) of Yi et al.)
    logit[i, j] = -inf   where item_j == item_i and j != i      (accidental hits: the positive again)
    loss        = mean_i  -log softmax_j(logit[i, :])[pos(i)]

Q_j is the expected number of times item j appears among the candidates of one step: a batch of B
positives drawn from the training stream has item j about B * p_j times (p_j = train frequency of j,
Yi et al. estimate it by streaming frequency; we know it from the prepared stats), and M uniform draws
from the N known items add M / N (mixed negative sampling, Yang et al., "Mixed Negative Sampling for
Learning Two-tower Neural Networks in Recommendations", WWW 2020):

    Q_j = B * p_j + M / N

Without extra negatives the B factor is a constant and cancels in the softmax. ``logq_correction=False``
drops the term. ``scoring_layer`` mode adds the same softmax over the head's scores of the positive and
63 sampled batch candidates (``TowerOutput.head_logits``), accidental hits masked likewise.

Full softmax (``loss="full_softmax"``; the cross-entropy over the whole catalogue that Klenitskiy &
Vasilev, RecSys 2023, sec. 3, show lifts SASRec on ML-1M): every known item is a candidate of every query
(per-event rows or sequence positions alike), each exactly once, so the softmax is exact and needs no logQ
correction, no accidental-hit mask and no extra negatives. With N known items (indices 1..N):

    logit[i, j] = <q_i, v_j> / temperature        j = 1..N
    l_i         = -log softmax_j(logit[i, :])[y_i]

reduced by the weighted mean below. A step costs B x N logits: for catalogues up to ~1e5 items.

Baseline ``loss="bce"``: pointwise binary cross-entropy on <q_i, v_i>/temperature (label 1) and on
``num_negatives`` uniformly sampled items per positive (label 0; a sample equal to the positive is
ignored), averaged per query over its valid terms:

    l_i = (softplus(-s_ii) + sum_k valid_ik softplus(s_ik)) / (1 + sum_k valid_ik)

Sample weights (weighted datasets: ``batch["weight"]``, w_i >= 0 per example, (B,) float32): every
per-query loss above (the softmax term, the BCE l_i, and the ``scoring_layer`` head's softmax term) is
reduced by the weighted mean

    loss = sum_i w_i l_i / sum_i w_i          (the plain mean when the batch has no ``weight``)

over this worker's B rows (with several workers, DDP averages the workers' gradients; 0 when every
weight is 0).

Training on every position (``examples: sequence``, :func:`sequence_softmax_loss`; SASRec's next-item
objective, Kang & McAuley, ICDM 2018, with the sampled softmax above instead of its BCE): a batch holds
windows of users' items; each valid position p (``mask``; P of them) is a query q_p predicting its next
item y_p. One candidate set S is shared by every position: the positives of the batch's positions (all
of them, or ``in_batch_candidates`` = C drawn uniformly with replacement; with ``gather_negatives``
those of every worker) plus M uniform extra negatives. Each position also scores its own positive:

    logit[p, +] = <q_p, v_{y_p}> / temperature - log Q_{y_p}          (the label column)
    logit[p, s] = <q_p, v_s> / temperature - log Q_s                  s in S
    logit[p, s] = -inf   where s is p's own entry (the label again), and with mask_accidental_hits where
                         item_s == y_p (accidental hit) or s is a later position of the same user
                         (user_s == user_p and pos_s > pos_p: that user's own future positives)
    l_p = -log softmax(logit[p, :])[+]
    Q_j = K * p_j + M / N     (K = positive columns of S: the C draws of every worker, or the P positions)

Per-position weighting: every position counts once, ``loss = sum_p w_p l_p / sum_p w_p`` over the P
positions of this worker's batch (w_p = 1, or the weight of the target event on a weighted dataset): a
window of 200 positions weighs 200 times a window of one. With all positions as candidates and no
masking, l_p is exactly the in-batch softmax above with the P positions as its B rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

NEG_INF = float("-inf")


@dataclass
class LossOutput:
    """``loss``: scalar float32 tensor to backpropagate; ``logs``: floats for progress lines."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


def log_q(item_prob: torch.Tensor, item_idx: torch.Tensor, batch_positives: int, num_extra: int,
          num_items: int) -> torch.Tensor:
    """log Q_j = log(B * p_j + M / N) for candidate items ``item_idx`` (C,) -> (C,) float32.

    ``item_prob`` (num_items,) are unigram train frequencies p_j; N = num_items - 1 known items.
    """
    q = batch_positives * item_prob[item_idx] + num_extra / max(num_items - 1, 1)
    return torch.log(q.clamp(min=1e-12))


def weighted_mean(per_query: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """sum_i w_i l_i / sum_i w_i of per-query losses (B,) with weights (B,) (w_i >= 0); the plain mean
    when ``weight`` is None. Returns a scalar (0 when every weight is 0)."""
    if weight is None:
        return per_query.mean()
    w = weight.to(per_query.dtype)
    return (w * per_query).sum() / w.sum().clamp(min=torch.finfo(per_query.dtype).tiny)


def sampled_softmax_loss(query: torch.Tensor, candidates: torch.Tensor, candidate_idx: torch.Tensor,
                         labels: torch.Tensor, temperature: float, candidate_log_q: torch.Tensor | None,
                         mask_accidental_hits: bool, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy of each query over a shared candidate set.

    Args:
        query: (B, D) float32. candidates: (C, D) float32. candidate_idx: (C,) int64 item indices.
        labels: (B,) int64 column of each row's positive in ``candidates``.
        temperature: logits are divided by it. candidate_log_q: (C,) float32 log Q_j or None (no correction).
        mask_accidental_hits: set logit[i, j] = -inf where candidate j is row i's item but j != labels[i].
        weight: (B,) float32 sample weights or None.
    Returns: scalar :func:`weighted_mean` of the per-query losses.
    """
    logits = query @ candidates.T / temperature                                      # (B, C)
    if candidate_log_q is not None:
        logits = logits - candidate_log_q.unsqueeze(0)
    if mask_accidental_hits:
        positive_idx = candidate_idx[labels]                                          # (B,)
        hit = candidate_idx.unsqueeze(0) == positive_idx.unsqueeze(1)                 # (B, C)
        hit[torch.arange(len(labels), device=labels.device), labels] = False
        logits = logits.masked_fill(hit, NEG_INF)
    return weighted_mean(F.cross_entropy(logits, labels, reduction="none"), weight)


def sequence_softmax_loss(query: torch.Tensor, positive: torch.Tensor, positive_idx: torch.Tensor,
                          positive_owner: torch.Tensor, candidates: torch.Tensor, candidate_idx: torch.Tensor,
                          candidate_owner: torch.Tensor, temperature: float, positive_log_q: torch.Tensor | None,
                          candidate_log_q: torch.Tensor | None, mask_accidental_hits: bool,
                          weight: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy of every position over its positive + shared candidates (module docstring).

    Args:
        query: (P, D) float32, one row per position. positive: (P, D) float32 representations of each
            position's next item; positive_idx: (P,) int64 its item index. positive_owner: (P, 2) int64
            (user index, position in the user's sequence) of each positive.
        candidates: (C, D) float32 shared candidates; candidate_idx: (C,) int64 (0 = an empty slot, never a
            candidate); candidate_owner: (C, 2) int64 ((-1, -1) for extra uniform negatives).
        temperature: logits are divided by it. positive_log_q / candidate_log_q: (P,) / (C,) float32 log Q,
            or None (no correction). mask_accidental_hits: mask hits and the same user's later positives.
        weight: (P,) float32 per-position weights or None.
    Returns: scalar :func:`weighted_mean` of the per-position losses.
    """
    pos = (query * positive).sum(-1, keepdim=True) / temperature                       # (P, 1)
    logits = query @ candidates.T / temperature                                        # (P, C)
    if positive_log_q is not None:
        pos = pos - positive_log_q.unsqueeze(1)
        logits = logits - candidate_log_q.unsqueeze(0)
    same_user = positive_owner[:, :1] == candidate_owner[:, 0].unsqueeze(0)            # (P, C)
    pos_p, pos_c = positive_owner[:, 1:], candidate_owner[:, 1].unsqueeze(0)
    drop = (same_user & (pos_c == pos_p)) | (candidate_idx == 0).unsqueeze(0)
    if mask_accidental_hits:
        drop = drop | (candidate_idx.unsqueeze(0) == positive_idx.unsqueeze(1)) | (same_user & (pos_c > pos_p))
    logits = torch.cat([pos, logits.masked_fill(drop, NEG_INF)], dim=1)
    labels = torch.zeros(len(query), dtype=torch.long, device=query.device)
    return weighted_mean(F.cross_entropy(logits, labels, reduction="none"), weight)


def full_softmax_loss(query: torch.Tensor, catalogue: torch.Tensor, target_idx: torch.Tensor, temperature: float,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """Exact softmax cross-entropy over the whole catalogue (module docstring, ``loss="full_softmax"``).

    Args:
        query: (B, D) float32 (per-event rows or sequence positions). catalogue: (N, D) float32, row j-1 the
            representation of item index j (items 1..N). target_idx: (B,) int64 item index of each positive,
            in 1..N. temperature: logits are divided by it. weight: (B,) float32 or None.
    Returns: scalar :func:`weighted_mean` of the per-query losses.
    """
    logits = query @ catalogue.T / temperature                                        # (B, N)
    return weighted_mean(F.cross_entropy(logits, target_idx - 1, reduction="none"), weight)


def head_softmax_loss(head_logits: torch.Tensor, head_candidates: torch.Tensor,
                      mask_accidental_hits: bool, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``scoring_layer``: softmax over head scores (B, C) with the positive in column 0; candidates (B, C)
    int64; weight (B,) or None. Returns the scalar :func:`weighted_mean` of the per-query losses."""
    if mask_accidental_hits:
        hit = head_candidates == head_candidates[:, :1]
        hit[:, 0] = False
        head_logits = head_logits.masked_fill(hit, NEG_INF)
    labels = torch.zeros(len(head_logits), dtype=torch.long, device=head_logits.device)
    return weighted_mean(F.cross_entropy(head_logits, labels, reduction="none"), weight)


def bce_loss(query: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor, item_idx: torch.Tensor,
             negative_idx: torch.Tensor, temperature: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Pointwise BCE (module docstring): query (B, D), items (B, D), negatives (B, K, D), indices (B,),
    (B, K), weight (B,) or None -> scalar :func:`weighted_mean` of the per-query l_i."""
    pos = (query * items).sum(-1) / temperature                                       # (B,)
    neg = torch.einsum("bd,bkd->bk", query, negatives) / temperature                  # (B, K)
    valid = (negative_idx != item_idx.unsqueeze(1)).float()
    pos_loss = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="none")
    neg_loss = (F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="none") * valid).sum(1)
    return weighted_mean((pos_loss + neg_loss) / (1.0 + valid.sum(1)), weight)


def compute_loss(model: nn.Module, batch: dict[str, torch.Tensor], gather: Callable | None = None, rank: int = 0,
                 generator: torch.Generator | None = None) -> LossOutput:
    """One training step's loss for ``model`` (a TwoTowerModel, possibly DDP-wrapped) on ``batch``.

    Args:
        batch: model input tensors (see TwoTowerModel); B rows; ``weight`` (B,) float32 when the dataset
            is weighted (the module docstring's weighted mean). A sequence batch (``targets``, windows
            of B users) gets :func:`sequence_softmax_loss` over its P valid positions.
        gather: optional ``f(t) -> cat of t over all workers`` (dim 0) keeping the local gradient; when given,
            in-batch negatives come from every worker (all workers must use the same B).
        rank: this worker's rank; its rows sit at ``rank * B`` in gathered tensors.
        generator: RNG for sampled negatives (CPU generator).
    """
    core = getattr(model, "module", model)
    if core.cfg.loss == "full_softmax":
        return _full_loss(model, core, batch)
    if "targets" in batch:
        return _sequence_loss(model, core, batch, gather, rank, generator)
    cfg, num_items = core.cfg, core.schema.num_items
    item_idx, weight = batch["item_idx"], batch.get("weight")
    b, m = len(item_idx), cfg.num_negatives
    device = item_idx.device
    if cfg.loss == "bce":
        neg_idx = torch.randint(1, num_items, (b, max(m, 1)), generator=generator).to(device)
        out = model(batch, extra_item_idx=neg_idx.reshape(-1))
        loss = bce_loss(out.query, out.items, out.extra_items.reshape(b, -1, out.items.shape[-1]), item_idx,
                        neg_idx, cfg.temperature, weight)
        return _add_head_loss(loss, out, cfg, {"retrieval_loss": loss.item()}, weight)

    extra_idx = torch.randint(1, num_items, (m,), generator=generator).to(device) if m > 0 else None
    out = model(batch, extra_item_idx=extra_idx)
    cand, cand_idx, offset = out.items, item_idx, 0
    if gather is not None:
        cand, cand_idx, offset = gather(out.items), gather(item_idx), rank * b
    batch_positives = len(cand_idx)
    if extra_idx is not None:
        cand, cand_idx = torch.cat([cand, out.extra_items]), torch.cat([cand_idx, extra_idx])
    cand_log_q = log_q(core.item_prob, cand_idx, batch_positives, m, num_items) if cfg.logq_correction else None
    labels = torch.arange(b, device=device) + offset
    loss = sampled_softmax_loss(out.query, cand, cand_idx, labels, cfg.temperature, cand_log_q,
                                cfg.mask_accidental_hits, weight)
    return _add_head_loss(loss, out, cfg, {"retrieval_loss": loss.item()}, weight)


def _sequence_loss(model, core, batch: dict[str, torch.Tensor], gather: Callable | None, rank: int,
                   generator: torch.Generator | None) -> LossOutput:
    """:func:`sequence_softmax_loss` of a sequence batch (module docstring); ``rank`` is unused: a
    position's own entry is recognised by its (user, position) owner, wherever it was gathered from."""
    cfg, num_items = core.cfg, core.schema.num_items
    mask, m = batch["mask"], cfg.num_negatives
    device = mask.device
    extra_idx = torch.randint(1, num_items, (m,), generator=generator).to(device) if m > 0 else None
    out = model(batch, extra_item_idx=extra_idx)
    pos_idx = batch["targets"][mask]
    owner = torch.stack([batch["user_idx"].unsqueeze(1).expand_as(mask)[mask], batch["positions"][mask]], dim=1)
    cand, cand_idx, cand_owner = out.items, pos_idx, owner
    if cfg.in_batch_candidates is not None:           # C draws with replacement: the same shape on every worker
        cols = torch.randint(0, max(len(pos_idx), 1), (cfg.in_batch_candidates,), generator=generator).to(device)
        cand, cand_idx, cand_owner = cand[cols], cand_idx[cols], cand_owner[cols]
    elif gather is not None:                          # every (B * L) slot, empty ones with item 0
        slots = mask.flatten().nonzero().squeeze(1)
        cand = out.items.new_zeros(mask.numel(), out.items.shape[1]).index_put((slots,), out.items)
        cand_idx = pos_idx.new_zeros(mask.numel()).index_put((slots,), pos_idx)
        cand_owner = owner.new_full((mask.numel(), 2), -1).index_put((slots,), owner)
    if gather is not None:
        cand, cand_idx, cand_owner = gather(cand), gather(cand_idx), gather(cand_owner)
    k = int((cand_idx > 0).sum())
    if extra_idx is not None:
        cand, cand_idx = torch.cat([cand, out.extra_items]), torch.cat([cand_idx, extra_idx])
        cand_owner = torch.cat([cand_owner, cand_owner.new_full((m, 2), -1)])
    pos_log_q = cand_log_q = None
    if cfg.logq_correction:
        pos_log_q = log_q(core.item_prob, pos_idx, k, m, num_items)
        cand_log_q = log_q(core.item_prob, cand_idx, k, m, num_items)
    weight = batch["weight"][mask] if "weight" in batch else None
    loss = sequence_softmax_loss(out.query, out.items, pos_idx, owner, cand, cand_idx, cand_owner, cfg.temperature,
                                 pos_log_q, cand_log_q, cfg.mask_accidental_hits, weight)
    return _add_head_loss(loss, out, cfg, {"retrieval_loss": loss.item()}, weight)


def _full_loss(model, core, batch: dict[str, torch.Tensor]) -> LossOutput:
    """:func:`full_softmax_loss` of a per-event or sequence batch: the catalogue is the item tower of every
    known item (indices 1..N), computed once per step."""
    catalogue_idx = torch.arange(1, core.schema.num_items, device=batch["user_idx"].device)
    out = model(batch, extra_item_idx=catalogue_idx)
    if "targets" in batch:
        mask = batch["mask"]
        target, weight = batch["targets"][mask], (batch["weight"][mask] if "weight" in batch else None)
    else:
        target, weight = batch["item_idx"], batch.get("weight")
    loss = full_softmax_loss(out.query, out.extra_items, target, core.cfg.temperature, weight)
    return _add_head_loss(loss, out, core.cfg, {"retrieval_loss": loss.item()}, weight)


def _add_head_loss(loss: torch.Tensor, out, cfg, logs: dict[str, float], weight: torch.Tensor | None) -> LossOutput:
    """Total = retrieval loss + (scoring_layer only) the head's softmax loss, both weighted by ``weight``."""
    if out.head_logits is not None:
        head = head_softmax_loss(out.head_logits, out.head_candidates, cfg.mask_accidental_hits, weight)
        logs["head_loss"] = head.item()
        loss = loss + head
    logs["loss"] = loss.item()
    return LossOutput(loss, logs)
