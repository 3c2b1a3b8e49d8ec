"""ExampleCache: the first pass's rows replayed as shuffled batches of the same count; the byte budget."""
from __future__ import annotations

import pytest
import torch

from twotower.distributed.example_cache import ExampleCache, batch_nbytes


def _batches(rows: int, size: int, history: int = 5):
    for start in range(0, rows - size + 1, size):
        ids = torch.arange(start, start + size)
        yield {"user_idx": ids, "history": ids[:, None].repeat(1, history), "weight": ids.float()}


def _filled(rows=100, size=10) -> ExampleCache:
    cache = ExampleCache(max_bytes=1 << 20)
    for b in _batches(rows, size):
        assert cache.add(b)
    cache.seal()
    return cache


def test_replayed_passes_hold_every_cached_row_once_in_a_new_order_with_the_first_pass_batch_count():
    cache = _filled(rows=105, size=10)              # 10 full batches: 100 rows kept, as drop_last leaves them
    assert cache.rows == 100 and cache.nbytes == 100 * (8 + 5 * 8 + 4)
    passes = [[b for b in cache.batches(10, seed=s)] for s in (1, 2, 1)]
    for batches in passes:
        assert len(batches) == 10 and all(len(b["user_idx"]) == 10 for b in batches)
        ids = torch.cat([b["user_idx"] for b in batches])
        assert sorted(ids.tolist()) == list(range(100))
        rows = batches[3]                           # columns stay aligned row by row
        assert torch.equal(rows["history"][:, 0], rows["user_idx"]) and torch.equal(rows["weight"], rows["user_idx"].float())
    order = [torch.cat([b["user_idx"] for b in p]).tolist() for p in passes]
    assert order[0] != order[1] and order[0] == order[2]          # seeded: new order per pass, reproducible
    assert order[0] != list(range(100))


def test_over_the_budget_the_cache_drops_its_rows_and_refuses_more():
    size = batch_nbytes(next(_batches(10, 10)))
    cache = ExampleCache(max_bytes=3 * size)
    results = [cache.add(b) for b in list(_batches(40, 10))[:4]]
    assert results == [True, True, True, False] and cache.nbytes == 0 and cache.rows == 0
    with pytest.raises(RuntimeError, match="dropped"):
        cache.add(next(_batches(10, 10)))
    with pytest.raises(RuntimeError, match="dropped"):
        cache.seal()


def test_a_pass_expected_over_the_budget_is_refused_at_its_first_batch():
    size = batch_nbytes(next(_batches(10, 10)))
    assert not ExampleCache(max_bytes=3 * size, expected_batches=4).add(next(_batches(10, 10)))
    assert ExampleCache(max_bytes=4 * size, expected_batches=4).add(next(_batches(10, 10)))


def test_misuse_is_a_clear_error():
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        ExampleCache(max_bytes=0)
    with pytest.raises(RuntimeError, match="before seal"):
        next(ExampleCache(max_bytes=100).batches(10, seed=0))
