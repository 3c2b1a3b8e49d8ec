"""Ray Data ingest: dtypes/shapes after preprocessing, equal train shards, lossless eval shards."""
from __future__ import annotations

import numpy as np
import pytest

from twotower.data.splits import split_num_rows
from twotower.distributed.data import (EVAL_ROWS_PER_BLOCK, TwoTowerDataConfig, iter_eval_batches,
                                       iter_train_batches, read_split)
from twotower.model.schema import DatasetSchema

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def _consume_all(iterators, fn):
    """Consume streaming-split iterators concurrently (they share one execution)."""
    import ray

    @ray.remote(num_cpus=0)
    def run(it):
        return fn(it)

    return ray.get([run.remote(it) for it in iterators])


def test_train_batches_have_model_dtypes_and_equal_steps(ray_cluster, synthetic_dataset):
    schema = DatasetSchema.load(synthetic_dataset)
    ds = read_split(synthetic_dataset, "train", schema, shuffle_seed=0)
    shards = TwoTowerDataConfig().configure({"train": ds}, world_size=2, worker_handles=None,
                                            worker_node_ids=None)
    its = [s["train"] for s in shards]

    def count(it):
        steps, first = 0, None
        for b in iter_train_batches(it, 500, seed=0, epoch=1, rank=0):
            first = first or {k: (str(v.dtype), tuple(v.shape)) for k, v in b.items()}
            steps += 1
        return steps, first

    (s0, f0), (s1, _) = _consume_all(its, count)
    rows = split_num_rows(synthetic_dataset, "train")
    assert s0 == s1 == rows // 2 // 500                  # equal=True + drop_last: same step count
    assert f0["history"] == ("torch.int64", (500, schema.history_length))
    assert f0["user_idx"] == ("torch.int64", (500,)) and f0["item_idx"] == ("torch.int64", (500,))
    for feat in schema.context_features:
        assert f0[feat.name] == ("torch.float32" if feat.kind == "numeric" else "torch.int64", (500,))


def test_eval_shards_drop_no_rows_and_are_balanced(ray_cluster, synthetic_dataset):
    schema = DatasetSchema.load(synthetic_dataset)
    ds = read_split(synthetic_dataset, "valid", schema, with_seen=True, rows_per_block=EVAL_ROWS_PER_BLOCK)
    shards = TwoTowerDataConfig().configure({"valid": ds}, world_size=2, worker_handles=None,
                                            worker_node_ids=None)

    def collect(it):
        users, seen_ok = [], True
        for batch, seen in iter_eval_batches(it, batch_size=300):
            users.extend(batch["user_idx"].tolist())
            seen_ok &= len(seen) == len(batch["user_idx"]) and all(s.dtype == np.int64 for s in seen)
        return users, seen_ok

    (u0, ok0), (u1, ok1) = _consume_all([s["valid"] for s in shards], collect)
    assert ok0 and ok1
    assert len(u0) + len(u1) == split_num_rows(synthetic_dataset, "valid")      # nothing dropped
    assert sorted(u0 + u1) == sorted(set(u0 + u1))       # leave-last-out: one row per user, no duplicates
    assert min(len(u0), len(u1)) > 0                     # a single-file split still reaches both workers


def test_read_split_on_movielens(ray_cluster, ml100k_dataset):
    schema = DatasetSchema.load(ml100k_dataset)
    batch = read_split(ml100k_dataset, "test", schema, with_seen=True).take_batch(8, batch_format="numpy")
    assert batch["history"].shape == (8, schema.history_length) and batch["history"].dtype == np.int64
    assert batch["seen_items"].dtype == object and len(batch["seen_items"]) == 8


def test_missing_split_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no parquet files"):
        split_num_rows(tmp_path, "train")


def test_eval_batch_size_bounds_the_score_matrix():
    from twotower.model.metrics import EVAL_SCORES_PER_BATCH, eval_batch_size
    assert eval_batch_size(3884) == 512                      # small catalogues: the default batch
    assert eval_batch_size(1_000_001) == EVAL_SCORES_PER_BATCH // 1_000_001 == 33
    assert eval_batch_size(10 ** 9) == 8                     # never below 8 rows
    for n in (65_536, 1_000_001, 20_000_000):
        assert eval_batch_size(n) * n <= max(EVAL_SCORES_PER_BATCH, 8 * n)
