"""The GPU configuration, checked on CPU: what NCCL cannot run is switched (with the line saying so) or
refused, before anything starts; and the CPU threads each worker computes on."""
from __future__ import annotations

import logging
import os

import pytest
import torch

from twotower.distributed.config import ConfigError, TrainConfig
from twotower.distributed.run import resolve_run
from twotower.model.schema import DatasetSchema
from twotower.model.twotower import TwoTowerModel


def test_several_gpu_workers_get_dense_id_tables():
    cfg, line = TrainConfig.from_yaml(None, ["use_gpu=true", "num_workers=2"]).on_gpus()
    assert cfg.model.sparse_id_embeddings is False and cfg.use_gpu and cfg.num_workers == 2
    assert "NCCL cannot all-reduce sparse gradients" in line and "sparse_id_embeddings is switched off" in line
    schema = DatasetSchema(num_users=5, num_items=7, history_length=3)
    model = TwoTowerModel(schema, cfg.model)
    out = model.item_embedding(torch.tensor([1, 2])).sum() + model.user_tower.id_embedding(torch.tensor([1])).sum()
    out.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and not any(g.is_sparse for g in grads)            # what NCCL's all-reduce can take


@pytest.mark.parametrize("overrides", [["use_gpu=true"], ["num_workers=2"], ["use_gpu=true", "num_workers=2",
                                                                               "sparse_id_embeddings=false"]])
def test_other_configurations_are_left_as_they_are(overrides):
    cfg = TrainConfig.from_yaml(None, overrides)
    assert cfg.on_gpus() == (cfg, None)


def test_bf16_without_a_gpu_is_refused():
    with pytest.raises(ConfigError, match="precision: bf16 is mixed precision on CUDA and needs use_gpu: true"):
        TrainConfig.from_yaml(None, ["precision=bf16"])
    assert TrainConfig.from_yaml(None, ["precision=bf16", "use_gpu=true"]).precision == "bf16"


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_the_resolved_run_carries_the_switch_and_logs_it(synthetic_dataset, tmp_path, caplog):
    cfg = TrainConfig.from_yaml(None, ["use_gpu=true", "num_workers=2", "batch_size=256", f"storage_path={tmp_path}"])
    with caplog.at_level(logging.WARNING, logger="twotower.train"):
        run = resolve_run(cfg, synthetic_dataset)
    assert run.config.model.sparse_id_embeddings is False
    assert any("NCCL cannot all-reduce sparse gradients" in r.getMessage() for r in caplog.records)


def test_worker_threads_split_the_cores_among_the_workers_of_a_node():
    from twotower.distributed.train_loop import worker_threads

    cores = len(os.sched_getaffinity(0))
    assert worker_threads(None, 1) == cores
    assert worker_threads(None, 2) == max(1, cores // 2)
    assert worker_threads(None, 4 * cores) == 1                   # never 0
    assert worker_threads(3, 2) == 3                              # an explicit torch_threads wins
    with pytest.raises(ValueError, match="torch_threads"):
        TrainConfig.model_validate({"torch_threads": 0})
