"""Fan-out of one query to every shard searcher, version agreement, and the exact merge
(:func:`twotower.index.merge.merge_topk`, the one ``ShardedIndex.search`` uses).

During an index swap (searchers reconfigured one after another) shards may answer from different
index versions. Every searcher keeps the previous version loaded, so :func:`search_all` retries the
shards that answered from another version with the newest version every shard holds: each answer
comes entirely from one version, old or new, never a mix and never an error.

A searcher replica that dies (crash, OOM kill) fails its in-flight calls with ``ActorDiedError``, and
until Serve's controller has started a replacement, new calls wait in Serve's router for a replica
(without a limit of their own). So every call gets the time left before the fan-out's deadline
(``timeout_s``), failed shards are retried every ``wait_s`` until then, and at the deadline
:class:`ShardsUnavailable` (HTTP 503 + ``Retry-After``) names the shards that did not answer: a
request either succeeds on a retry or fails within ``timeout_s``, it never hangs.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from twotower.index.merge import merge_topk

from .schema import Unavailable
from .shards import SearchRequest, SearchResult

Searcher = Callable[[SearchRequest], Awaitable[SearchResult]]
DEFAULT_TIMEOUT_S = 10.0
MAX_ERROR_CHARS = 160


class ShardsUnavailable(Unavailable):
    """The shards could not answer consistently in time (not loaded, restarting, or no common version)."""


def _target_version(results: Sequence[SearchResult]) -> str | None:
    """The newest version held by every shard, or None when there is none."""
    held = [set(r.versions) for r in results]
    common = set.intersection(*held) if held else set()
    if not common:
        return None
    order = max((r.versions for r in results), key=len)
    return max(common, key=lambda v: order.index(v) if v in order else -1)


def _failed(why: str) -> SearchResult:
    return SearchResult(None, (), np.zeros(0, np.float32), np.zeros(0, np.int64), why)


async def _call(searcher: Searcher, request: SearchRequest, timeout_s: float) -> SearchResult:
    """One searcher call bounded by ``timeout_s``; any failure becomes a result with ``error`` set."""
    if timeout_s <= 0:
        return _failed("no time left")
    response = searcher(request)
    try:
        return await asyncio.wait_for(response, timeout_s)
    except asyncio.TimeoutError:
        cancel = getattr(response, "cancel", None)     # a Serve DeploymentResponse: drop the queued request
        if cancel is not None:
            cancel()
        return _failed(f"no answer within {timeout_s:.1f} s (replica restarting?)")
    except Exception as e:   # a replica that died or is being replaced: retried like a version miss
        text = " ".join(str(e).split())
        return _failed(f"{type(e).__name__}: {text[:MAX_ERROR_CHARS]}")


async def search_all(searchers: Sequence[Searcher], query: np.ndarray, k: int, exclude: np.ndarray | None = None,
                     *, timeout_s: float = DEFAULT_TIMEOUT_S, wait_s: float = 0.05, attempts: int | None = None,
                     names: Sequence[str] | None = None, retry_after_s: int = 1,
                     on_error: Callable[[str, str], None] | None = None) -> tuple[str, np.ndarray, np.ndarray]:
    """Top-``k`` over all shards for one query, all shards answering from one index version.

    Args:
        searchers: one async callable per shard (a DeploymentHandle method, or a local function).
        query: float32 (D,). exclude: int64 item indices to leave out.
        timeout_s: deadline of the whole fan-out, retries included (seconds).
        wait_s: pause before a retry round when no version is common to all shards (seconds).
        attempts: at most this many retry rounds (None: until the deadline).
        names: deployment name of each shard for the error (default ``shard S``).
        retry_after_s: the ``Retry-After`` the 503 suggests (seconds).
        on_error: called ``(name, why)`` for every failed shard call, retried or not (metrics).
    Returns:
        (index version, scores float32 (k,), item_idx int64 (k,)), best first, -inf / -1 padded.
    Raises:
        ShardsUnavailable: no consistent answer before the deadline; the message names each shard that
            failed and why (error, timeout, or the versions it holds), ``deployments`` lists them.
    """
    deadline = time.monotonic() + timeout_s
    left = lambda: deadline - time.monotonic()                       # noqa: E731
    names = list(names) if names is not None else [f"shard {s}" for s in range(len(searchers))]

    def report(shards: Sequence[int]) -> None:
        for s in shards:
            if on_error is not None and results[s].error is not None:
                on_error(names[s], results[s].error)
    results = list(await asyncio.gather(*(_call(s, SearchRequest(query, k, exclude), left()) for s in searchers)))
    report(range(len(results)))
    rounds = 0
    while True:
        versions = {r.version for r in results}
        if all(r.error is None for r in results) and len(versions) == 1:
            scores, items = merge_topk([r.scores for r in results], [r.items for r in results], k)
            return results[0].version, scores, items
        if left() <= 0 or (attempts is not None and rounds >= attempts):
            break
        rounds += 1
        target = _target_version(results)
        if target is None:
            await asyncio.sleep(min(wait_s, max(left(), 0.0)))
        redo = [s for s, r in enumerate(results) if r.error is not None or r.version != target]
        again = await asyncio.gather(*(_call(searchers[s], SearchRequest(query, k, exclude, target), left())
                                       for s in redo))
        for s, r in zip(redo, again):
            results[s] = r
        report(redo)
    bad = [s for s, r in enumerate(results) if r.error is not None]
    if bad:
        why = "; ".join(f"{names[s]} (shard {s}): {results[s].error}" for s in bad)
        raise ShardsUnavailable(f"index shard(s) unavailable after {timeout_s:.1f} s: {why}; retry after "
                                f"{retry_after_s} s", [names[s] for s in bad], retry_after_s)
    held = "; ".join(f"{names[s]}: {r.version}" for s, r in enumerate(results))
    raise ShardsUnavailable(f"index shards did not answer from one version ({held}); retry after {retry_after_s} s",
                            list(names), retry_after_s)
