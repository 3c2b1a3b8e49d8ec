"""Ray Train's ``TorchTrainer`` without the two actors that only guard a long-lived cluster.

A ``TorchTrainer.fit`` in Ray 2.60 starts, beside the controller and the workers, a detached
``PlacementGroupCleaner`` (asks the dashboard's state API every second whether the controller is still
alive, and removes the run's placement group when it is not) and a ``PreemptionWatcher`` (polls every
5 s for nodes being drained). In a local runtime that the job started itself and shuts down at its
end, neither has anything to guard: the placement group ends with the runtime, and nothing drains the
node. Each is one more Ray Python process, and every Ray Python process wakes about 100 times a second
(the core worker's signal check); on a 2-core machine those wake-ups interrupt the training step
(docs/benchmarks.md, "Ray's runtime on 2 cores"). The cleaner also needs the dashboard, whose dozen
processes a local training run no longer starts.

:func:`trainer_class` picks Ray's own ``TorchTrainer`` or :class:`LeanTorchTrainer`; the trainer
decides with :func:`twotower.distributed.trainer.lean_fit`. This module reaches into Ray Train
internals (``_create_default_callbacks``, the callback classes), pinned by
``tests/distributed/test_lean_trainer.py``: a Ray upgrade that renames them fails there, not silently.
"""
from __future__ import annotations

import os

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.constants import ENABLE_PREEMPTION_WATCHER_ENV_VAR

__all__ = ["LeanTorchTrainer", "trainer_class"]


class LeanTorchTrainer(TorchTrainer):
    """``TorchTrainer`` with no ``PlacementGroupCleaner`` and no ``PreemptionWatcher`` actor; use it only
    on a runtime that ends with the job (see the module docstring). Everything else is Ray's."""

    def _create_default_callbacks(self):
        return [cb for cb in super()._create_default_callbacks()
                if not isinstance(cb, PlacementGroupCleanerCallback)]

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        # The controller reads the flag from its environment, which Ray copies from this process's
        # (ray.train.v2._internal.constants.get_env_vars_to_propagate) when it creates the controller.
        before = os.environ.get(ENABLE_PREEMPTION_WATCHER_ENV_VAR)
        os.environ[ENABLE_PREEMPTION_WATCHER_ENV_VAR] = "0"
        try:
            return super()._initialize_and_run_controller(**controller_init_kwargs)
        finally:
            if before is None:
                os.environ.pop(ENABLE_PREEMPTION_WATCHER_ENV_VAR, None)
            else:
                os.environ[ENABLE_PREEMPTION_WATCHER_ENV_VAR] = before


def trainer_class(lean: bool) -> type[TorchTrainer]:
    """:class:`LeanTorchTrainer` when ``lean``, else Ray's ``TorchTrainer``."""
    return LeanTorchTrainer if lean else TorchTrainer
