"""Fan-out of one query to every shard searcher, version agreement, and the exact merge.

During an index swap (searchers reconfigured one after another) shards may answer from different
index versions. Every searcher keeps the previous version loaded, so :func:`search_all` retries the
shards that answered from another version with the newest version every shard holds: each answer
comes entirely from one version, old or new, never a mix and never an error. Only when no version is
common to all shards for ``attempts`` rounds (a searcher restarting) does it give up with
:class:`ShardsUnavailable` (HTTP 503).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from .schema import Unavailable
from .shards import SearchRequest, SearchResult, merge_topk

Searcher = Callable[[SearchRequest], Awaitable[SearchResult]]


class ShardsUnavailable(Unavailable):
    """The shards could not answer consistently (not loaded, or no common index version)."""


def _target_version(results: Sequence[SearchResult]) -> str | None:
    """The newest version held by every shard, or None when there is none."""
    held = [set(r.versions) for r in results]
    common = set.intersection(*held) if held else set()
    if not common:
        return None
    order = max((r.versions for r in results), key=len)
    return max(common, key=lambda v: order.index(v) if v in order else -1)


async def _call(searcher: Searcher, request: SearchRequest) -> SearchResult:
    try:
        return await searcher(request)
    except Exception as e:   # a replica being replaced or failing: retried like a version miss
        return SearchResult(None, (), np.zeros(0, np.float32), np.zeros(0, np.int64), f"{type(e).__name__}: {e}")


async def search_all(searchers: Sequence[Searcher], query: np.ndarray, k: int, exclude: np.ndarray | None = None,
                     *, attempts: int = 40, wait_s: float = 0.05) -> tuple[str, np.ndarray, np.ndarray]:
    """Top-``k`` over all shards for one query, all shards answering from one index version.

    Args:
        searchers: one async callable per shard (a DeploymentHandle method, or a local function).
        query: float32 (D,). exclude: int64 item indices to leave out.
    Returns:
        (index version, scores float32 (k,), item_idx int64 (k,)), best first, -inf / -1 padded.
    Raises:
        ShardsUnavailable: no consistent answer after ``attempts`` rounds (message says why).
    """
    results = list(await asyncio.gather(*(_call(s, SearchRequest(query, k, exclude)) for s in searchers)))
    for attempt in range(attempts):
        versions = {r.version for r in results}
        if all(r.error is None for r in results) and len(versions) == 1:
            scores, items = merge_topk([r.scores for r in results], [r.items for r in results], k)
            return results[0].version, scores, items
        target = _target_version(results)
        if target is None:
            await asyncio.sleep(wait_s)
        redo = [s for s, r in enumerate(results) if r.error is not None or r.version != target]
        again = await asyncio.gather(*(_call(searchers[s], SearchRequest(query, k, exclude, target)) for s in redo))
        for s, r in zip(redo, again):
            results[s] = r
    errors = sorted({f"shard {s}: {r.error or r.version}" for s, r in enumerate(results)})
    raise ShardsUnavailable(f"index shards did not answer from one version: {'; '.join(errors)}")
