"""In-process evaluation (no Ray): streaming reader, popularity baseline, checkpoint/dataset checks."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from twotower.data.sequences import cut_examples
from twotower.data.splits import read_split_examples, sequence_files
from twotower.data.tables import load_feature_tables
from twotower.evaluation import evaluate, iter_split_batches
from twotower.model.checkpoint import save_checkpoint
from twotower.model.config import ModelConfig
from twotower.model.schema import DatasetSchema
from twotower.model.twotower import TwoTowerModel

pytestmark = pytest.mark.timeout(300)        # the dataset fixtures run the prepare job on Ray


@pytest.fixture(scope="module")
def untrained_checkpoint(synthetic_dataset, tmp_path_factory):
    torch.manual_seed(0)
    schema = DatasetSchema.load(synthetic_dataset)
    users, items = load_feature_tables(synthetic_dataset)
    model = TwoTowerModel(schema, ModelConfig(hidden_dims=[32]), users, items)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "c", epoch=0)


def test_reader_streams_every_example_with_padded_history_and_seen_lists(synthetic_dataset):
    schema = DatasetSchema.load(synthetic_dataset)
    rows = pa.concat_tables(pq.read_table(f) for f in sequence_files(synthetic_dataset))
    whole = cut_examples(rows, 2, schema, with_seen=True)                  # all at once
    rows, sizes = 0, []
    for batch, seen in iter_split_batches(synthetic_dataset, "test", schema, batch_size=300):
        n = len(batch["user_idx"])
        assert batch["history"].shape == (n, schema.history_length) and len(seen) == n
        assert np.array_equal(batch["history"], whole["history"][rows:rows + n])
        assert [s.tolist() for s in seen] == [s.tolist() for s in whole["seen_items"][rows:rows + n]]
        assert all(s.dtype == np.int64 for s in seen) and "seen_items" not in batch
        rows, sizes = rows + n, sizes + [n]
    assert rows == len(whole["item_idx"]) == 2000 and sizes == [300] * 6 + [200]
    with pytest.raises(ValueError, match="valid or test split, got 'train'"):
        next(iter_split_batches(synthetic_dataset, "train", schema))


def test_popularity_baseline_matches_a_direct_computation(untrained_checkpoint, synthetic_dataset):
    result = evaluate(untrained_checkpoint, synthetic_dataset, split="test", ks=(10,))
    _, items = load_feature_tables(synthetic_dataset)
    counts = items["train_count"].astype(float)
    table = read_split_examples(synthetic_dataset, "test", DatasetSchema.load(synthetic_dataset), with_seen=True)
    hits = 0
    for target, seen in zip(table["item_idx"].tolist(), table["seen_items"]):
        candidates = np.ones(len(counts), bool)
        candidates[0] = False
        candidates[seen] = False
        candidates[target] = True
        hits += int((counts[candidates] > counts[target]).sum() < 10)
    assert result["popularity"]["recall@10"] == pytest.approx(hits / len(table["item_idx"]))
    assert result["num_queries"] == len(table["item_idx"]) == 2000 and result["split"] == "test"
    for name in ("model", "popularity"):
        assert {"recall@10", "hr@10", "ndcg@10", "sampled_hr@10", "sampled_ndcg@10", "count"} <= set(result[name])


def test_checkpoint_of_another_dataset_is_rejected(untrained_checkpoint, ml100k_dataset):
    with pytest.raises(ValueError, match="was trained on"):
        evaluate(untrained_checkpoint, ml100k_dataset)
