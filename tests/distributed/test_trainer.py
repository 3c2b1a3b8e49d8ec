"""End-to-end TwoTowerTrainer runs on local Ray (2 workers, synthetic data).

A fit costs ~30 s of fixed overhead here, so one module-scoped run (``fitted``: 2 workers,
gather_negatives, patience 1) serves most assertions; one more short run checks resuming.
"""
from __future__ import annotations

import csv

import pytest

from twotower.distributed.config import ConfigError, TrainConfig
from twotower.evaluation import evaluate
from twotower.distributed.trainer import TwoTowerTrainer
from twotower import storage
from twotower.model.checkpoint import load_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.timeout(400)]

EPOCHS = 10
PATIENCE = 1


def _config(tmp_path, **overrides) -> TrainConfig:
    base = dict(num_workers=2, batch_size=256, epochs=EPOCHS, patience=PATIENCE, storage_path=str(tmp_path),
                run_name="main", max_steps_per_epoch=40, stall_timeout_s=240, lr=0.005,
                model={"hidden_dims": [64], "final_embedding_dim": 32})
    return TrainConfig.model_validate({**base, **overrides})


@pytest.fixture(scope="module")
def fitted(ray_cluster, synthetic_dataset, tmp_path_factory):
    cfg = _config(tmp_path_factory.mktemp("runs"), gather_negatives=True, min_delta=0.02)
    result = TwoTowerTrainer(cfg).fit(synthetic_dataset)
    valid = evaluate(result.best_checkpoint, synthetic_dataset, split="valid")
    return cfg, result, valid


def test_learns_far_above_random_and_popularity(fitted):
    cfg, result, valid = fitted
    recall = result.metrics["valid_recall@10"]
    assert recall > 10 * (10 / 500)                              # random ranking: ~10 / num_items
    assert recall > 2 * valid["popularity"]["recall@10"]
    assert result.metrics["valid_count"] == 2000                 # every valid query, none dropped


def test_ddp_replicas_end_with_identical_weights(fitted):
    _, result, _ = fitted
    assert len(result.weight_digests) == 2
    assert result.weight_digests[0] == result.weight_digests[1]


def test_run_dir_has_metrics_curves_config(fitted):
    cfg, result, _ = fitted
    rows = list(csv.DictReader((result.run_dir / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [h["epoch"] for h in result.history]
    for col in ("train_loss", "valid_recall@10", "valid_recall@20", "valid_recall@50", "valid_hr@10",
                "valid_ndcg@10", "valid_sampled_hr@10", "seconds", "examples_per_s", "data_wait_s"):
        assert col in rows[0] and float(rows[0][col]) >= 0
    assert (result.run_dir / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert TrainConfig.from_yaml(result.run_dir / "config.yaml") == cfg
    assert result.best_checkpoint == result.run_dir / "best_checkpoint"
    assert not result.best_checkpoint.is_symlink()


def test_best_checkpoint_round_trip_reproduces_the_reported_metric(fitted):
    _, result, valid = fitted
    best = max(h["valid_recall@10"] for h in result.history)
    assert result.metrics["valid_recall@10"] == best
    loaded = load_checkpoint(result.best_checkpoint)
    assert loaded.meta["epoch"] == result.metrics["epoch"]
    # re-ranking the valid split in-process with the restored model gives the distributed metric
    assert valid["num_queries"] == 2000
    assert valid["model"]["recall@10"] == pytest.approx(result.metrics["valid_recall@10"], abs=1e-3)
    assert valid["model"]["ndcg@10"] == pytest.approx(result.metrics["valid_ndcg@10"], abs=1e-3)


def test_early_stopping_stops_before_epochs(fitted):
    _, result, _ = fitted
    assert result.stopped_early
    assert len(result.history) < EPOCHS
    assert result.history[-1]["stop"] == 1
    assert result.history[-1]["valid_recall@10"] <= result.history[-2]["best_valid_recall@10"] + 0.02


def test_resume_continues_at_the_next_epoch(fitted, synthetic_dataset, tmp_path, s3_store):
    cfg, first, _ = fitted
    b = first.metrics["epoch"]
    resume_from = f"{s3_store}/resume/best_checkpoint"          # read by every worker from the object store
    storage.upload_dir(first.best_checkpoint, resume_from)
    # lr ~ 0 in the resumed epoch (the step schedule: 0.01 up to epoch b, x 1e-10 after): it leaves the
    # weights as restored, so its metric equals the checkpoint's
    resumed = TwoTowerTrainer(_config(tmp_path, run_name="resumed", epochs=b + 1, lr=0.01, lr_decay_epochs=[b],
                                      lr_decay_factor=1e-10, patience=0,
                                      max_steps_per_epoch=5, resume_from=resume_from)
                              ).fit(synthetic_dataset)
    epochs = [h["epoch"] for h in resumed.history]
    assert epochs == list(range(1, b + 2))                       # earlier epochs from the checkpoint + one new
    assert resumed.history[:b] == first.history[:b]
    assert resumed.history[-1]["valid_recall@10"] == pytest.approx(first.metrics["valid_recall@10"], abs=2e-3)
    rows = list(csv.DictReader((resumed.run_dir / "metrics.csv").open()))
    assert len(rows) == b + 1


def test_incompatible_resume_and_cluster_errors_fail_fast(fitted, synthetic_dataset, tmp_path, s3_store):
    _, first, _ = fitted
    with pytest.raises(ConfigError, match="model config differs in .*hidden_dims"):
        TwoTowerTrainer(_config(tmp_path, resume_from=str(first.best_checkpoint),
                                model={"hidden_dims": [128], "final_embedding_dim": 32})).fit(synthetic_dataset)
    with pytest.raises(ConfigError, match=rf"resume_from: {s3_store}/nothing/checkpoint.json: missing"):
        TwoTowerTrainer(_config(tmp_path, resume_from=f"{s3_store}/nothing")).fit(synthetic_dataset)
    with pytest.raises(ConfigError, match="already completed epoch"):
        TwoTowerTrainer(_config(tmp_path, resume_from=str(first.best_checkpoint),
                                epochs=first.metrics["epoch"])).fit(synthetic_dataset)
    with pytest.raises(ConfigError, match="already holds a finished run"):   # not silently restored
        TwoTowerTrainer(_config(first.run_dir.parent, run_name=first.run_dir.name)).fit(synthetic_dataset)
    with pytest.raises(ConfigError, match="CPUs"):               # 8 workers on a 4-CPU cluster: no hang
        TwoTowerTrainer(_config(tmp_path, num_workers=8, batch_size=64)).fit(synthetic_dataset)


def test_batch_larger_than_a_shard_is_a_config_error(synthetic_dataset, tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        TwoTowerTrainer(_config(tmp_path, batch_size=50_000)).fit(synthetic_dataset)
