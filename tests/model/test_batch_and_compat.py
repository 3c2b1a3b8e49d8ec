"""The one padding helper, the one batch conversion, and the one checkpoint-vs-dataset check."""
from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch

from twotower.model.batch import as_tensors, pad_lists, to_numpy_batch, to_tensors
from twotower.model.checkpoint import (IncompatibleDatasetError, check_dataset, load_checkpoint, read_checkpoint,
                                       save_checkpoint)
from twotower.model.config import ModelConfig
from twotower.model.schema import Feature
from twotower.model.twotower import TwoTowerModel

ROWS = [[1, 2, 3], [], None, [4, 5, 6, 7, 8]]
PADDED_4 = np.array([[1, 2, 3, 0], [0, 0, 0, 0], [0, 0, 0, 0], [4, 5, 6, 7]])


def test_pad_lists_gives_the_same_array_for_every_input_kind():
    arrow = pa.array(ROWS, pa.list_(pa.int32()))
    kinds = [arrow, pa.chunked_array([arrow[:1], arrow[1:3], arrow[3:]]), ROWS,
             np.array([np.array(r or [], np.int64) for r in ROWS], dtype=object)]
    for column in kinds:
        out = pad_lists(column, 4)
        assert out.dtype == np.int64 and np.array_equal(out, PADDED_4)
    assert np.array_equal(pad_lists(PADDED_4, 2), PADDED_4[:, :2])                     # 2-D: truncated
    assert np.array_equal(pad_lists(PADDED_4[:, :2], 3), np.c_[PADDED_4[:, :2], np.zeros(4, int)])   # padded
    assert pad_lists([], 3).shape == (0, 3) and pad_lists(ROWS, 0).shape == (4, 0)


def test_batch_conversion_happens_once_and_as_tensors_does_not_convert(toy_schema):
    raw = {"user_idx": np.array([1, 2], np.int32), "item_idx": np.array([3, 4], np.int32),
           "history": pa.array([[5], [6, 7]], pa.list_(pa.int32())), "hour_sin": np.array([0.5, -1.0]),
           "day_of_week": np.array([1, 7], np.int32), "ignored": np.array([9, 9])}
    converted = to_numpy_batch(raw, toy_schema)
    assert set(converted) == {"user_idx", "item_idx", "history", "hour_sin", "day_of_week"}
    assert converted["history"].tolist() == [[5, 0, 0, 0, 0], [6, 7, 0, 0, 0]]
    assert converted["hour_sin"].dtype == np.float32 and converted["user_idx"].dtype == np.int64
    assert to_numpy_batch(converted, toy_schema)["history"] is converted["history"]   # already converted: kept
    tensors = as_tensors(converted)
    assert tensors["history"].dtype == torch.int64 and tensors["hour_sin"].dtype == torch.float32
    assert all(torch.equal(tensors[k], v) for k, v in to_tensors(raw, toy_schema).items())
    with pytest.raises(KeyError, match="day_of_week"):
        to_numpy_batch({k: v for k, v in raw.items() if k != "day_of_week"}, toy_schema)


def test_check_dataset_names_the_first_difference(toy_schema):
    check_dataset(toy_schema, toy_schema, checkpoint="ck", dataset_dir="ds")          # same schema: fine
    cases = {
        "num_items 21, but ds has 22": dataclasses.replace(toy_schema, num_items=22),
        "history_length 5, but ds has 7": dataclasses.replace(toy_schema, history_length=7),
        r"other item_features than ds has \(differ in \['year'\]": dataclasses.replace(
            toy_schema, item_features=(toy_schema.item_features[0], Feature("year", "categorical", 9))),
        r"other context_features .* \['hour_cos'\]": dataclasses.replace(
            toy_schema, context_features=toy_schema.context_features + (Feature("hour_cos", "numeric"),)),
    }
    for message, other in cases.items():
        with pytest.raises(IncompatibleDatasetError, match=rf"checkpoint ck was trained on {message}"):
            check_dataset(toy_schema, other, checkpoint="ck", dataset_dir="ds")
    assert issubclass(IncompatibleDatasetError, ValueError)      # callers map it to exit code 2 / HTTP 4xx


def test_read_checkpoint_parses_once_and_load_reuses_it(tmp_path, toy_schema, toy_tables):
    model = TwoTowerModel(toy_schema, ModelConfig(hidden_dims=[8], final_embedding_dim=4), *toy_tables)
    save_checkpoint(model, tmp_path / "ck", epoch=2)
    info = read_checkpoint(tmp_path / "ck")
    assert info.schema == toy_schema and info.model_config.final_embedding_dim == 4
    assert len(info.model_sha256) == 64 and info.model_version == info.model_sha256[:12]
    (tmp_path / "ck" / "checkpoint.json").unlink()          # load_checkpoint(info=...) does not read it again
    loaded = load_checkpoint(tmp_path / "ck", info=info)
    assert loaded.meta["epoch"] == 2 and loaded.model_sha256 == info.model_sha256
    assert torch.equal(loaded.model.state_dict()["item_tower.table_year"], model.state_dict()["item_tower.table_year"])


def test_shuffled_batches_drop_the_partial_batch_honour_max_batches_and_follow_the_generator():
    import torch

    from twotower.model.batch import shuffled_batches

    cols = {"user_idx": torch.arange(25), "history": torch.arange(25)[:, None].repeat(1, 3)}
    full = list(shuffled_batches(cols, 10, torch.Generator().manual_seed(3)))
    assert [len(b["user_idx"]) for b in full] == [10, 10]                    # 5 rows left over, dropped
    assert len(set(torch.cat([b["user_idx"] for b in full]).tolist())) == 20
    assert all(torch.equal(b["history"][:, 0], b["user_idx"]) for b in full)  # columns stay row-aligned
    again = list(shuffled_batches(cols, 10, torch.Generator().manual_seed(3), max_batches=1))
    assert len(again) == 1 and torch.equal(again[0]["user_idx"], full[0]["user_idx"])
    assert list(shuffled_batches({}, 10, torch.Generator())) == []
