"""Retrieval metrics: full-ranking Recall@k, HR@k, NDCG@k and sampled HR@k / NDCG@k.

Each evaluation row is a query (a user with the context and history of that moment) with one target
item. Full ranking ranks the whole catalogue except the unknown item 0 and the user's items from earlier
splits (``seen``; the target itself is never excluded). With one target per query Recall@k equals
HR@k (the target is in the top k); both are reported under the names the field uses.

    rank   = number of candidate items scoring higher than the target (0-based; ties go to the
             smaller item index, so coarse scorers like popularity get no credit for ties)
    HR@k   = Recall@k = mean[rank < k]
    NDCG@k = mean[(rank < k) / log2(rank + 2)]          (one relevant item, so IDCG = 1)

Sampled metrics follow He et al., "Neural Collaborative Filtering", WWW 2017: the target is ranked
against 100 items drawn uniformly (seeded by the row's user and target, so the draw does not depend
on batching or worker) from the items the user never interacted with (not seen, not the target).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

SAMPLED_NEGATIVES = 100     # negatives per query of the sampled metrics (He et al. 2017): validation and evaluate
EVAL_BATCH_SIZE = 512
EVAL_SCORES_PER_BATCH = 1 << 25     # 32M float32 scores = 128 MiB per (batch x catalogue) score matrix


def popularity_scores(train_count: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Popularity baseline: score of each item (num_items,) float32 = its train interaction count."""
    return torch.as_tensor(np.asarray(train_count), dtype=torch.float32)


def eval_batch_size(num_items: int) -> int:
    """Rows per full-ranking evaluation batch: ``EVAL_BATCH_SIZE``, lowered so that the (rows, num_items)
    float32 score matrix stays within ``EVAL_SCORES_PER_BATCH`` (128 MiB): 512 rows up to 65k items,
    32 rows at 1M items, at least 8."""
    return int(max(8, min(EVAL_BATCH_SIZE, EVAL_SCORES_PER_BATCH // max(num_items, 1))))


class RankingAccumulator:
    """Accumulates additive sums of ranking metrics over batches (and workers) of queries.

    Args:
        ks: cut-offs for Recall@k / HR@k / NDCG@k.
        num_items: catalogue size including the unknown index 0.
        sampled_negatives: negatives per query for sampled HR/NDCG (0 disables them).
        sampled_k: cut-off of the sampled metrics.
        seed: base seed of the negative draws.
    """

    def __init__(self, ks: Sequence[int], num_items: int, sampled_negatives: int = SAMPLED_NEGATIVES,
                 sampled_k: int = 10, seed: int = 0):
        self.ks, self.num_items = sorted(set(int(k) for k in ks)), num_items
        self.sampled_negatives, self.sampled_k, self.seed = sampled_negatives, sampled_k, seed
        self._sums: dict[str, float] = {"count": 0.0}

    def _sample_negatives(self, user: int, target: int, excluded: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([self.seed, user, target])
        out: list[int] = []
        while len(out) < self.sampled_negatives:
            draw = rng.integers(1, self.num_items, size=2 * self.sampled_negatives)
            draw = draw[~np.isin(draw, excluded)]
            out.extend(draw.tolist())
            if len(excluded) >= self.num_items - 1:       # nothing left to draw from
                break
        return np.asarray(out[: self.sampled_negatives], dtype=np.int64)

    def add(self, scores: torch.Tensor, target: torch.Tensor, seen: Sequence[np.ndarray],
            user_idx: torch.Tensor | None = None) -> None:
        """Add a batch: scores (B, num_items) float, target (B,) int64, seen: B arrays of item indices.

        ``user_idx`` (B,) seeds the sampled negatives (defaults to the target when not given).
        """
        scores = scores.detach().float().cpu().clone()
        target = target.detach().long().cpu()
        users = user_idx.detach().long().cpu() if user_idx is not None else target
        rows = torch.arange(len(target))
        target_score = scores[rows, target]
        scores[:, 0] = float("-inf")
        for i, s in enumerate(seen):
            if s is not None and len(s):
                scores[i, torch.as_tensor(np.asarray(s, dtype=np.int64))] = float("-inf")
        scores[rows, target] = target_score
        rank = _rank(scores, target_score, target)
        self._sums["count"] += len(target)
        for k in self.ks:
            hit = rank < k
            self._sums[f"hits@{k}"] = self._sums.get(f"hits@{k}", 0.0) + float(hit.sum())
            self._sums[f"dcg@{k}"] = self._sums.get(f"dcg@{k}", 0.0) + float((hit / np.log2(rank + 2)).sum())
        if self.sampled_negatives > 0:
            k = self.sampled_k
            hits_key, dcg_key = f"sampled_hits@{k}", f"sampled_dcg@{k}"
            for i in range(len(target)):
                t = int(target[i])
                excluded = np.union1d(np.asarray(seen[i] if seen[i] is not None else [], dtype=np.int64), [0, t])
                neg = self._sample_negatives(int(users[i]), t, excluded)
                neg_t = torch.from_numpy(neg)
                r = int(_rank(scores[i, neg_t].unsqueeze(0), target_score[i:i + 1], target[i:i + 1], neg_t)[0])
                if r < k:
                    self._sums[hits_key] = self._sums.get(hits_key, 0.0) + 1.0
                    self._sums[dcg_key] = self._sums.get(dcg_key, 0.0) + 1.0 / math.log2(r + 2)

    def sums(self) -> dict[str, float]:
        """Additive sums (all keys always present) to all-reduce across workers before ``finalize``."""
        keys = ["count"] + [f"{m}@{k}" for k in self.ks for m in ("hits", "dcg")]
        if self.sampled_negatives > 0:
            keys += [f"sampled_hits@{self.sampled_k}", f"sampled_dcg@{self.sampled_k}"]
        return {k: self._sums.get(k, 0.0) for k in keys}

    @staticmethod
    def finalize(sums: dict[str, float]) -> dict[str, float]:
        """Metric values from (summed) ``sums``: recall@k, hr@k, ndcg@k, sampled_hr@K, sampled_ndcg@K, count."""
        n = max(sums["count"], 1.0)
        out: dict[str, float] = {"count": sums["count"]}
        for key, value in sums.items():
            if key.startswith("hits@"):
                k = key.split("@")[1]
                out[f"recall@{k}"] = out[f"hr@{k}"] = value / n
                out[f"ndcg@{k}"] = sums[f"dcg@{k}"] / n
            elif key.startswith("sampled_hits@"):
                k = key.split("@")[1]
                out[f"sampled_hr@{k}"] = value / n
                out[f"sampled_ndcg@{k}"] = sums[f"sampled_dcg@{k}"] / n
        return out


def _rank(scores: torch.Tensor, target_score: torch.Tensor, target: torch.Tensor,
          columns: torch.Tensor | None = None) -> np.ndarray:
    """0-based rank of each row's target among the columns of ``scores`` (B, C).

    Ties are broken by item index (a tied item with a smaller index ranks first), so a constant or
    coarse scorer such as popularity gets no credit for ties. ``columns`` (C,) gives the item index of
    each column (default 0..C-1).
    """
    cols = torch.arange(scores.shape[1]) if columns is None else columns
    t = target_score.unsqueeze(1)
    tied_before = (scores == t) & (cols.unsqueeze(0) < target.unsqueeze(1))
    return ((scores > t) | tied_before).sum(dim=1).numpy()
