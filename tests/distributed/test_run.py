"""``resolve_run``: everything the workers get, resolved once on the driver (no Ray started)."""
from __future__ import annotations

import dataclasses
import pickle

import pytest

from twotower.data.splits import sequence_files, split_num_rows
from twotower.distributed.config import ConfigError, TrainConfig
from twotower.distributed.run import resolve_run
from twotower.model.schema import DatasetSchema


def test_the_resolved_run_is_frozen_picklable_and_complete(synthetic_dataset, tmp_path):
    cfg = TrainConfig.validated(dict(num_workers=2, batch_size=500, storage_path=str(tmp_path), run_name="r",
                                     max_steps_per_epoch=7))
    run = resolve_run(cfg, synthetic_dataset)
    assert run.schema == DatasetSchema.load(synthetic_dataset) and run.config == cfg
    assert run.files == {s: sequence_files(synthetic_dataset) for s in ("train", "valid")}   # both cut from them
    assert run.rows == {"train": split_num_rows(synthetic_dataset, "train"), "valid": 2000}
    assert run.rows["train"] == 56_000
    assert run.steps_per_epoch == min(run.rows["train"] // 2 // 500, 7) == 7
    assert run.run_dir == tmp_path / "r" and run.storage_path == str(tmp_path) and run.resume is None
    assert not (tmp_path / "r").exists()                              # resolving writes nothing
    assert pickle.loads(pickle.dumps(run)) == run                    # what Ray ships to every worker
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.steps_per_epoch = 1


def test_config_is_validated_once_with_flags_last(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nmodel:\n  temperature: 0.2\n")
    cfg = TrainConfig.from_yaml(path, ["lr=0.01", "temperature=0.1"], {"epochs": 5, "num_workers": 2})
    assert (cfg.epochs, cfg.lr, cfg.model.temperature, cfg.num_workers) == (5, 0.01, 0.1, 2)
    assert cfg.eval_cutoffs == [10, 20, 50] and cfg.monitor_key == "valid_recall@10"
    with pytest.raises(ConfigError, match="config key 'epochs'"):
        TrainConfig.from_yaml(None, [], {"epochs": 0})


def test_the_step_schedule_multiplies_lr_after_each_listed_epoch():
    cfg = TrainConfig(lr=0.002, lr_decay_epochs=[60, 65], lr_decay_factor=0.25)
    assert [cfg.lr_at(e) for e in (1, 60, 61, 65, 66, 70)] == pytest.approx(
        [0.002, 0.002, 0.0005, 0.0005, 0.000125, 0.000125])
    assert TrainConfig(lr=0.01).lr_at(100) == 0.01


def test_early_stopping_counts_only_gains_above_min_delta():
    from twotower.distributed.config import TrainConfig
    from twotower.distributed.train_state import TrainState

    cfg, state = TrainConfig(patience=2, epochs=10, min_delta=0.01), TrainState()
    stops = [state.end_epoch(e, v, cfg) for e, v in enumerate([0.50, 0.505, 0.508, 0.53, 0.531, 0.535], 1)]
    assert stops == [False, False, True, False, False, True]
    assert (state.best_epoch, state.best_metric) == (6, 0.535)      # the best value, however small its gain
