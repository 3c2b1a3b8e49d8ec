"""Exact (NumPy brute-force) top-k, ANN recall against it, and full-catalogue scores ranked through an index.

For ``twotower evaluate``::

    index = ShardedIndex.load(index_dir)
    scores = torch.from_numpy(ann_rank_scores(index, queries, num_items, depth=max(ks), exclude=seen))
    accumulator.add(scores, target, seen, user_idx)              # metrics ranked through the index
    recall = index_recall(index, model.all_item_embeddings(), queries, k=10)   # ANN vs exact
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .sharded import ShardedIndex, _as_numpy

SCORE_BUDGET = 1 << 26     # brute force scores at most this many (query, item) pairs at once (256 MiB)


def exact_topk(embeddings, queries, k: int, item_idx: np.ndarray | None = None,
               exclude: Sequence[Sequence[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k in NumPy float32, chunked over queries to bound memory.

    Args:
        embeddings: (N, D) float32 item vectors. queries: (n, D) float32.
        item_idx: (N,) int64 item index of each row; default ``arange(N)`` with row 0 (the unknown
            item) left out, i.e. ``embeddings`` is ``TwoTowerModel.all_item_embeddings()``.
        exclude: optional n sequences of item_idx to leave out per query.
    Returns:
        (scores (n, k) float32, item_idx (n, k) int64), best first, ties by ascending item_idx;
        -inf / -1 where fewer than k items remain.
    """
    emb = np.ascontiguousarray(_as_numpy(embeddings), dtype=np.float32)
    q = np.ascontiguousarray(_as_numpy(queries), dtype=np.float32)
    if item_idx is None:
        emb, ids = emb[1:], np.arange(1, len(emb), dtype=np.int64)
    else:
        ids = np.asarray(item_idx, dtype=np.int64)
    if emb.ndim != 2 or q.ndim != 2 or emb.shape[1] != q.shape[1] or len(ids) != len(emb):
        raise ValueError(f"shapes do not fit: embeddings {emb.shape}, queries {q.shape}, item_idx {ids.shape}")
    out_s = np.full((len(q), k), -np.inf, np.float32)
    out_i = np.full((len(q), k), -1, np.int64)
    kk = min(k, len(ids))
    chunk = max(1, SCORE_BUDGET // max(len(ids), 1))
    for a in range(0, len(q), chunk):
        s = q[a:a + chunk] @ emb.T                                                # (c, N)
        if exclude is not None:
            for r in range(len(s)):
                e = exclude[a + r]
                if e is not None and len(e):
                    s[r, np.isin(ids, np.asarray(e, np.int64))] = -np.inf
        if kk == 0:
            continue
        if kk < len(ids):
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            kth = np.take_along_axis(s, part, axis=1).min(axis=1)
            for r in np.flatnonzero((s >= kth[:, None]).sum(axis=1) > kk):   # ties across the cut-off:
                cand = np.flatnonzero(s[r] >= kth[r])                          # the smallest item_idx win
                part[r] = cand[np.lexsort((ids[cand], -s[r, cand]))[:kk]]
        else:
            part = np.tile(np.arange(len(ids)), (len(s), 1))
        ps, pi = np.take_along_axis(s, part, axis=1), ids[part]
        order = np.lexsort((pi, -ps), axis=1)
        out_s[a:a + len(s), :kk] = np.take_along_axis(ps, order, axis=1)
        out_i[a:a + len(s), :kk] = np.take_along_axis(pi, order, axis=1)
    out_i[np.isneginf(out_s)] = -1
    return out_s, out_i


def _exact_ids(exact, queries, k: int, exclude) -> np.ndarray:
    if isinstance(exact, ShardedIndex):
        return exact.search(queries, k, exclude)[1]
    if isinstance(exact, tuple):
        return exact_topk(exact[0], queries, k, item_idx=exact[1], exclude=exclude)[1]
    return exact_topk(exact, queries, k, exclude=exclude)[1]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of |found_r ∩ truth_r| / |truth_r| for (n, k) int64 id arrays; -1 entries ignored."""
    hits, total = 0, 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        hits += len(np.intersect1d(f[f >= 0], t))
        total += len(t)
    return hits / total if total else 1.0


def index_recall(index: ShardedIndex, exact_index_or_embeddings, queries, k: int,
                 exclude: Sequence[Sequence[int]] | None = None) -> float:
    """Recall@k of ``index`` against exact search: mean fraction of the exact top-k the index returns.

    Args:
        index: the (ANN) index to measure.
        exact_index_or_embeddings: an exact :class:`ShardedIndex` (``Flat``), an (embeddings (N, D),
            item_idx (N,)) tuple, or a (num_items, D) array/tensor whose row i is item i
            (``all_item_embeddings()``; row 0, the unknown item, is skipped).
        queries: (n, D) float32. k: cut-off. exclude: optional per-query item_idx to leave out of both.
    Returns:
        recall in [0, 1] (1.0 for an exact index, up to score ties).
    """
    found = index.search(queries, k, exclude)[1]
    return recall_at_k(found, _exact_ids(exact_index_or_embeddings, queries, k, exclude))


def ann_rank_scores(index: ShardedIndex, queries, num_items: int, depth: int,
                    exclude: Sequence[Sequence[int]] | None = None, base_scores=None) -> np.ndarray:
    """Full-catalogue scores (n, num_items) float32 whose ranking is the index's top-``depth`` result.

    The ``depth`` items the index returns per query (``exclude`` passed to the search) keep their index
    score. Every other item is ranked below all of them: with ``base_scores`` ((n, num_items), e.g. the
    brute-force scores) it keeps that order shifted below the retrieved ones, otherwise it gets one
    floor value (lowest retrieved score - 1). Full-ranking metrics at k <= depth are then exactly those
    of ranking through the index; without ``base_scores``, sampled metrics count ties with the floor in
    the target's favour. Wrap with ``torch.from_numpy`` for ``RankingAccumulator.add``.
    """
    scores, items = index.search(queries, depth, exclude)
    n = len(scores)
    valid = items >= 0
    low = np.where(valid, scores, np.inf).min(axis=1)
    low = np.where(np.isfinite(low), low, 0.0).astype(np.float32)                     # (n,)
    if base_scores is not None:
        base = np.array(_as_numpy(base_scores), dtype=np.float32, copy=True)
        out = base - (base.max(axis=1) - low + 1.0)[:, None]
    else:
        out = np.repeat((low - 1.0)[:, None], num_items, axis=1).astype(np.float32)
    rows = np.repeat(np.arange(n), depth).reshape(n, depth)
    out[rows[valid], items[valid]] = scores[valid]
    return out
