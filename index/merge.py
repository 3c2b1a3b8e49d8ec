"""The one exact top-k merge: per-shard (or deeper per-shard) results -> the global top-k.

Used by :meth:`twotower.index.ShardedIndex.search` (shards of one process, and a shard's own deeper
re-search at a tie) and by the serving fan-out (:func:`twotower.serve.fanout.search_all`, one query,
shards in other processes), so both order results the same way: score descending, ties by ascending
item_idx, empty slots (score -inf, item_idx -1) last.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def merge_topk(scores: Sequence[np.ndarray], items: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact merge of per-part results into the top-``k``.

    Args:
        scores: one float32 array per part (shard), each (n, k_s) (or (k_s,) for a single query); any
            order within a part. Parts may differ in k_s (0 included).
        items: the matching int64 item_idx arrays, same shapes; -1 marks an empty slot.
        k: results per query (>= 0).
    Returns:
        (scores float32 (n, k), item_idx int64 (n, k)) ((k,) each for 1-D parts): score descending, ties
        by ascending item_idx, then the empty slots; padded with -inf / -1 when the parts hold fewer than
        k results, and a -inf score always has item_idx -1.
    Raises:
        ValueError: no parts, or ``scores`` and ``items`` of different lengths.
    """
    if not len(scores) or len(scores) != len(items):
        raise ValueError(f"need one items array per scores array (at least one), got {len(scores)} and {len(items)}")
    single = np.ndim(scores[0]) == 1
    s = np.concatenate([np.atleast_2d(np.asarray(x, np.float32)) for x in scores], axis=1)
    i = np.concatenate([np.atleast_2d(np.asarray(x, np.int64)) for x in items], axis=1)
    tie = np.where(i < 0, np.iinfo(np.int64).max, i)
    order = np.lexsort((tie, -s), axis=1)[:, :k]
    out_s = np.full((len(s), k), -np.inf, np.float32)
    out_i = np.full((len(s), k), -1, np.int64)
    out_s[:, :order.shape[1]] = np.take_along_axis(s, order, axis=1)
    out_i[:, :order.shape[1]] = np.take_along_axis(i, order, axis=1)
    out_i[np.isneginf(out_s)] = -1
    return (out_s[0], out_i[0]) if single else (out_s, out_i)
