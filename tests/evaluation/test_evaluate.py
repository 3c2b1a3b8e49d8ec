"""In-process evaluation (no Ray): streaming reader, popularity baseline, checkpoint/dataset checks."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from twotower.data.tables import load_feature_tables
from twotower.evaluation import evaluate, iter_split_batches
from twotower.model.checkpoint import save_checkpoint
from twotower.model.config import ModelConfig
from twotower.model.schema import DatasetSchema
from twotower.model.twotower import TwoTowerModel


@pytest.fixture(scope="module")
def untrained_checkpoint(synthetic_dataset, tmp_path_factory):
    torch.manual_seed(0)
    schema = DatasetSchema.load(synthetic_dataset)
    users, items = load_feature_tables(synthetic_dataset)
    model = TwoTowerModel(schema, ModelConfig(hidden_dims=[32]), users, items)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "c", epoch=0)


def test_reader_streams_every_row_with_padded_history_and_seen_lists(synthetic_dataset):
    schema = DatasetSchema.load(synthetic_dataset)
    table = pq.read_table(synthetic_dataset / "interactions" / "test")
    rows = 0
    for batch, seen in iter_split_batches(synthetic_dataset, "test", schema, batch_size=300):
        n = len(batch["user_idx"])
        assert batch["history"].shape == (n, schema.history_length) and len(seen) == n
        expected = table["seen_items"].slice(rows, n).to_pylist()
        assert [s.tolist() for s in seen] == expected
        rows += n
    assert rows == table.num_rows


def test_popularity_baseline_matches_a_direct_computation(untrained_checkpoint, synthetic_dataset):
    result = evaluate(untrained_checkpoint, synthetic_dataset, split="test", ks=(10,))
    _, items = load_feature_tables(synthetic_dataset)
    counts = items["train_count"].astype(float)
    table = pq.read_table(synthetic_dataset / "interactions" / "test", columns=["item_idx", "seen_items"])
    hits = 0
    for target, seen in zip(table["item_idx"].to_pylist(), table["seen_items"].to_pylist()):
        candidates = np.ones(len(counts), bool)
        candidates[0] = False
        candidates[seen] = False
        candidates[target] = True
        hits += int((counts[candidates] > counts[target]).sum() < 10)
    assert result["popularity"]["recall@10"] == pytest.approx(hits / table.num_rows)
    assert result["num_queries"] == table.num_rows and result["split"] == "test"
    for name in ("model", "popularity"):
        assert {"recall@10", "hr@10", "ndcg@10", "sampled_hr@10", "sampled_ndcg@10", "count"} <= set(result[name])


def test_checkpoint_of_another_dataset_is_rejected(untrained_checkpoint, ml100k_dataset):
    with pytest.raises(ValueError, match="was trained on"):
        evaluate(untrained_checkpoint, ml100k_dataset)
