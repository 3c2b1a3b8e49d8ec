"""Ray Data ingest: dtypes/shapes of the examples cut in the pipeline, the same examples as cut in-process,
equal train shards, lossless eval shards, the sample weight carried through."""
from __future__ import annotations

import dataclasses
import shutil
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from twotower.data.sequences import cut_examples, sequence_schema, write_sequence_file
from twotower.data.splits import split_num_rows
from twotower.distributed.data import (EVAL_ROWS_PER_BLOCK, TwoTowerDataConfig, iter_eval_batches,
                                       iter_train_batches, read_split)
from twotower.distributed.example_cache import ExampleCache
from twotower.distributed.train_stream import TimedBatches, TrainStream
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
        for b in iter_train_batches(it, 500, seed=0, pass_number=1, rank=0):
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


@pytest.mark.parametrize("split", ["train", "valid"])
def test_pipeline_yields_exactly_the_examples_cut_in_process(ray_cluster, synthetic_dataset, split):
    schema = DatasetSchema.load(synthetic_dataset)
    valid = split == "valid"

    def _key(user, item, history, seen=None) -> tuple:   # local: the Ray tasks below cannot import this module
        return (int(user), int(item), tuple(history.tolist())) + (() if seen is None else (tuple(seen.tolist()),))

    ref = cut_examples(pq.read_table(synthetic_dataset / "sequences"), int(valid), schema, with_seen=valid)
    want = Counter(_key(*cols) for cols in zip(ref["user_idx"], ref["item_idx"], ref["history"],
                                               *([ref["seen_items"]] if valid else [])))
    ds = read_split(synthetic_dataset, split, schema, with_seen=valid, shuffle_seed=None if valid else 3,
                    rows_per_block=EVAL_ROWS_PER_BLOCK if valid else None)
    shards = TwoTowerDataConfig().configure({split: ds}, world_size=2, worker_handles=None, worker_node_ids=None)

    def collect(it):
        if valid:
            return [_key(u, i, h, s) for b, seen in iter_eval_batches(it, batch_size=300)
                    for u, i, h, s in zip(b["user_idx"], b["item_idx"], b["history"], seen)]
        return [_key(u, i, h) for b in it.iter_batches(batch_size=1000, batch_format="numpy")
                for u, i, h in zip(b["user_idx"], b["item_idx"], b["history"])]

    got = _consume_all([s[split] for s in shards], collect)
    assert Counter(got[0] + got[1]) == want and sum(want.values()) == (2000 if valid else 56_000)
    assert min(map(len, got)) > 0 and (valid or len(got[0]) == len(got[1]))   # train: equal=True, none dropped


def test_weight_flows_through_to_the_training_batch(ray_cluster, synthetic_dataset, tmp_path):
    """A weighted copy of the synthetic dataset (weight = item / 1000 per interaction)."""
    out = shutil.copytree(synthetic_dataset, tmp_path / "weighted")
    schema = dataclasses.replace(DatasetSchema.load(out), weighted=True)
    schema.save(out / "schema.json")
    for path in (out / "sequences").iterdir():
        rows = pq.read_table(path)
        weight = pa.ListArray.from_arrays(rows["item_idx"].combine_chunks().offsets, pa.array(
            pc.list_flatten(rows["item_idx"]).to_numpy() / 1000, pa.float32()))
        write_sequence_file(rows.append_column("weight", weight).select(sequence_schema(schema).names), str(path))
    shard = TwoTowerDataConfig().configure({"train": read_split(out, "train", schema, shuffle_seed=0)}, world_size=1,
                                           worker_handles=None, worker_node_ids=None)[0]["train"]
    batch = next(iter(iter_train_batches(shard, 256, seed=0, pass_number=1, rank=0)))
    assert batch["weight"].dtype == torch.float32 and batch["weight"].shape == (256,)
    assert torch.allclose(batch["weight"], batch["item_idx"].float() / 1000)


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


def _epochs(stream: TrainStream, cap: int, n: int) -> list[list[int]]:
    return [[int(x) for b in stream.epoch(cap) for x in b["id"]] for _ in range(n)]


def test_capped_epochs_continue_the_pass_instead_of_restarting_it(ray_cluster):
    import ray

    shard = ray.data.range(100, override_num_blocks=4).streaming_split(1, equal=True)[0]
    epochs = _epochs(TrainStream(shard, 10, seed=0, rank=0), cap=4, n=6)   # passes of 10 batches
    assert [len(e) for e in epochs] == [40, 40, 20, 40, 40, 20]           # an epoch never crosses a pass
    first, second = sum(epochs[:3], []), sum(epochs[3:], [])
    assert sorted(first) == sorted(second) == list(range(100))            # each pass: every row once
    assert first != second                                                  # reshuffled per pass


def test_uncapped_epochs_are_whole_passes_even_when_the_cap_is_the_pass_length(ray_cluster):
    import ray

    shard = ray.data.range(100, override_num_blocks=4).streaming_split(1, equal=True)[0]
    stream = TrainStream(shard, 10, seed=0, rank=0, first_pass=3)
    for cap in (10, 1 << 62):                     # exactly the steps of a pass (per-event runs), or none
        epochs = _epochs(stream, cap, 2)
        assert [sorted(e) for e in epochs] == [list(range(100))] * 2
    assert stream.next_pass == 7


class _CountingShard:
    """A real streaming-split shard that counts the passes it was asked for (``iter_torch_batches``)."""

    def __init__(self, shard):
        self.shard, self.passes = shard, 0

    def iter_torch_batches(self, **kwargs):
        self.passes += 1
        return self.shard.iter_torch_batches(**kwargs)


def test_with_a_cache_later_passes_replay_the_first_in_new_orders_without_the_pipeline(ray_cluster):
    import ray

    shard = _CountingShard(ray.data.range(100, override_num_blocks=4).streaming_split(1, equal=True)[0])
    said = []
    stream = TrainStream(shard, 10, seed=0, rank=0, cache=ExampleCache(1 << 20), say=said.append)
    epochs = _epochs(stream, cap=4, n=9)                                    # three passes of 10 batches
    assert [len(e) for e in epochs] == [40, 40, 20] * 3                      # the same epochs as streaming
    passes = [sum(epochs[i:i + 3], []) for i in (0, 3, 6)]
    assert all(sorted(p) == list(range(100)) for p in passes)               # each pass: every row once
    assert len({tuple(p) for p in passes}) == 3                             # a new order every pass
    assert shard.passes == 1 and said == ["train examples cached after pass 1: 100 rows, 0.00 GiB per "
                                          "worker; later passes shuffle them in memory"]


def test_a_cache_over_its_budget_is_dropped_and_every_pass_streams(ray_cluster):
    import ray

    shard = _CountingShard(ray.data.range(100, override_num_blocks=4).streaming_split(1, equal=True)[0])
    said = []
    stream = TrainStream(shard, 10, seed=0, rank=0, cache=ExampleCache(5 * 10 * 8), say=said.append)
    epochs = _epochs(stream, cap=10, n=3)                                   # 5 of the 10 batches fit
    assert [sorted(e) for e in epochs] == [list(range(100))] * 3
    assert shard.passes == 3 and stream.cache is None
    assert said == ["train examples not cached: this worker's share is over train_cache_gib (0.00 GiB); "
                    "every pass streams from Ray Data"]


def test_timed_batches_count_only_the_time_blocked_in_next():
    clock = [0.0]

    def slow_pipeline():
        for i in range(3):
            clock[0] += 2.0                      # 2 s to produce each batch
            yield i

    batches = TimedBatches(slow_pipeline(), clock=lambda: clock[0])
    seen = []
    for b in batches:
        clock[0] += 5.0                          # 5 s of training step: not waiting
        seen.append(b)
    assert seen == [0, 1, 2] and batches.wait_s == 6.0
