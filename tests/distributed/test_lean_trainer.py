"""The lean fit of a runtime that training starts itself: no dashboard, no placement-group cleaner, no
preemption watcher (distributed/lean_trainer.py, trainer.lean_fit)."""
from __future__ import annotations

import os

import pytest
import ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

from twotower.distributed.config import TrainConfig
from twotower.distributed.lean_trainer import LeanTorchTrainer, trainer_class
from twotower.distributed.trainer import lean_fit

GUARDS = ("PlacementGroupCleaner", "PreemptionWatcher")


def _noop(config):
    pass


def _guard_actor_ids() -> dict[str, set[str]]:
    """Ids of every actor (alive or dead) of the two guard classes in this Ray session."""
    from ray.util.state import list_actors

    out = {}
    for name in GUARDS:
        actors = list_actors(address=ray.get_runtime_context().gcs_address, timeout=30, limit=10_000,
                             filters=[("class_name", "=", name)])
        out[name] = {a.actor_id for a in actors}
    return out


def _fit(cls, tmp_path, name: str) -> None:
    def noop(config):          # local, so that cloudpickle ships it by value (workers cannot import tests)
        pass

    cls(noop, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name=name, storage_path=str(tmp_path))).fit()


def test_lean_fit_only_for_a_runtime_started_here_without_a_dashboard(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert lean_fit(True, TrainConfig()) is True
    assert lean_fit(True, TrainConfig(ray_dashboard=True)) is False      # the cleaner has its state API
    assert lean_fit(False, TrainConfig()) is False                       # a fixture's or a user's runtime
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert lean_fit(True, TrainConfig()) is False                        # a joined cluster: Ray's defaults
    assert trainer_class(True) is LeanTorchTrainer and trainer_class(False) is TorchTrainer


def test_the_lean_trainer_drops_the_cleaner_callback_that_ray_adds(ray_cluster, tmp_path):
    def kinds(cls):
        return [type(cb) for cb in cls(_noop, run_config=RunConfig(storage_path=str(tmp_path)))
                ._create_default_callbacks()]

    assert PlacementGroupCleanerCallback in kinds(TorchTrainer)          # not vacuous: Ray adds it
    lean = kinds(LeanTorchTrainer)
    assert PlacementGroupCleanerCallback not in lean
    assert len(lean) == len(kinds(TorchTrainer)) - 1                     # and nothing else goes


@pytest.mark.timeout(300)
def test_a_lean_fit_starts_neither_guard_actor_and_a_default_fit_starts_both(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", raising=False)
    before = _guard_actor_ids()
    _fit(LeanTorchTrainer, tmp_path, "lean")
    after_lean = _guard_actor_ids()
    assert after_lean == before
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in os.environ      # restored after the fit
    _fit(TorchTrainer, tmp_path, "default")
    after_default = _guard_actor_ids()
    assert {name: len(after_default[name] - after_lean[name]) for name in GUARDS} == {name: 1 for name in GUARDS}
