"""``TwoTowerTrainer(config).fit(dataset_dir)``: data-parallel training on Ray Train (TorchTrainer).

What ``fit`` does, top to bottom:

1. resolves the run once on the driver (:func:`~twotower.distributed.run.resolve_run`: config,
   schema, the footer and columns of every train/valid parquet file, batch size vs rows per worker,
   ``resume_from`` compatibility, run directory) and raises ConfigError / DataFormatError before
   anything starts; ``skip_bad_files`` leaves bad files out instead (a WARNING per file; listed in
   ``summary.json``);
2. starts a local Ray runtime when none is initialised (:func:`start_local_ray`) and shuts it down
   afterwards; an already initialised runtime (e.g. a test fixture, ``ray.init(address=...)``) is
   used as is. A runtime started here has no dashboard unless ``ray_dashboard``, and its fit has no
   placement-group cleaner nor preemption watcher (:func:`lean_fit`). Then checks that the cluster
   has the CPUs/GPUs (only logged on a cluster joined through ``RAY_ADDRESS``, where the autoscaler
   may add nodes);
3. runs ``TorchTrainer.fit`` inside a Ray task (so it can be force-cancelled) under the stall
   watchdog (``watchdog.run_with_watchdog``; ``TrainingStalledError`` after ``stall_timeout_s``
   without progress); the workers get the frozen :class:`~twotower.distributed.run.ResolvedRun`;
4. on a failed fit involving an I/O or Arrow error, finds the input file whose data pages do not
   decode and raises DataFormatError naming it (chained to the original error);
5. copies the best checkpoint (highest ``valid_recall@monitor_k``) to ``RUN_DIR/best_checkpoint`` and
   writes ``metrics.csv``, ``training_curves.png`` and ``summary.json``
   (:func:`~twotower.distributed.artifacts.write_run_artifacts`; ``config.yaml`` is written first).

Worker failures: with ``max_failures`` > 0, Ray Train replaces the worker group after a worker dies
and every worker restarts ``train_loop_per_worker``, which continues after the run's latest
registered checkpoint (one per epoch); the epochs it resumed after are in
``FitResult.resumed_after_epochs`` and ``summary.json``. A restart takes seconds to a minute (new
worker processes, dataset set-up), which counts against ``stall_timeout_s``.

``RUN_DIR`` is ``<storage_path>/<run_name>``, a local directory or a URI (``s3://bucket/runs/...``):
Ray Train's own ``epoch_NNNN`` checkpoint directories and state live there, and so do the artifacts
(for a URI they are written to a local temporary directory and uploaded at the end, ``summary.json``
last). The dataset may be a URI too: the driver and every worker read it through ``pyarrow.fs``
(:mod:`twotower.storage`). Re-using a ``run_name`` whose directory holds a Ray Train snapshot
makes Ray continue that run from its latest checkpoint.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import ray

from twotower import storage
from twotower.distributed.artifacts import FitResult, write_run_artifacts
from twotower.distributed.config import ConfigError, TrainConfig
from twotower.distributed.data import raise_for_unreadable_input
from twotower.distributed.local_ray import start_ray
from twotower.distributed.progress import TrainProgress
from twotower.distributed.run import ResolvedRun, resolve_run
from twotower.distributed.train_loop import CHECKPOINT_SCORE, train_loop_per_worker
from twotower.distributed.watchdog import ProgressTracker, TrainingStalledError, run_with_watchdog

log = logging.getLogger(__name__)

__all__ = ["FitResult", "TwoTowerTrainer", "start_local_ray"]


def start_local_ray(cfg: TrainConfig):
    """:func:`~twotower.distributed.local_ray.start_ray` as training needs it: at least
    ``ceil(num_workers * cpus_per_worker) + 2`` logical CPUs (Ray Data tasks beside the workers), and
    the dashboard only with ``ray_dashboard``. Returns the RayContext when this call started or joined
    Ray, None when it was already initialised."""
    return start_ray(min_cpus=math.ceil(cfg.num_workers * cfg.cpus_per_worker) + 2, dashboard=cfg.ray_dashboard)


def lean_fit(started_here: bool, cfg: TrainConfig) -> bool:
    """Whether the fit leaves out Ray Train's placement-group cleaner and preemption watcher: True for a
    runtime this process started (not one joined through ``RAY_ADDRESS``) without ``ray_dashboard``.

    Both are actors that guard a long-lived cluster: the cleaner removes the run's placement group
    when the controller dies (it asks the dashboard's state API every second, so without a dashboard
    it could only log a warning every second), the watcher polls for nodes being drained. A runtime
    that ends with the job has neither problem. Every Ray Python process wakes about 100 times a
    second; on a 2-core machine each one costs the training step about 1% (docs/benchmarks.md)."""
    return started_here and not cfg.ray_dashboard and not os.environ.get("RAY_ADDRESS")


class TwoTowerTrainer:
    """Distributed trainer for one :class:`TrainConfig`; see the module docstring."""

    def __init__(self, config: TrainConfig, train_loop: Callable[[dict], Any] = train_loop_per_worker):
        """``train_loop`` replaces the per-worker function (tests, custom loops); it gets the same
        ``{"run": ResolvedRun, "tracker": ...}`` dict as :func:`train_loop_per_worker` and must
        ``ray.train.report`` like it."""
        self.config, self.train_loop = config, train_loop

    def fit(self, dataset_dir: str | Path) -> FitResult:
        """Train on the prepared dataset at ``dataset_dir``; returns the best epoch's checkpoint.

        Raises:
            ConfigError: inputs that cannot work (batch larger than a worker's rows, incompatible
                ``resume_from``, not enough CPUs/GPUs in the cluster). SchemaError / FileNotFoundError:
                not a prepared dataset. DataFormatError: a train/valid parquet file that is not
                parquet, is truncated, lacks a column or has a wrong type (before anything starts,
                unless ``skip_bad_files``), or has a data page that fails to decode (after the failed
                fit); names the file. TrainingStalledError: no progress for ``stall_timeout_s``.
            ray.train.TrainingFailedError: a worker raised (after ``max_failures`` retries).
        """
        run = resolve_run(self.config, dataset_dir)
        for bad in run.skipped:
            log.warning("skip_bad_files: leaving out %s: %s", bad.path, bad.reason)
        storage.makedirs(run.run_dir)
        storage.write_bytes(storage.join(run.run_dir, "config.yaml"), run.config.to_yaml().encode())
        owned = start_local_ray(run.config) is not None
        try:
            _check_cluster(run.config)
            return write_run_artifacts(self._fit_watched(run, lean_fit(owned, run.config)), run)
        finally:
            if owned:
                ray.shutdown()

    def _fit_watched(self, run: ResolvedRun, lean: bool) -> dict:
        """The fit task under the stall watchdog; returns what :func:`_fit_task` returns."""
        tracker = ProgressTracker.remote()
        shown = TrainProgress(run.config.epochs, run.steps_per_epoch)

        def last_progress(timeout_s: float = 30.0) -> tuple[float, dict]:
            stamp, info, lines = ray.get(tracker.poll.remote(shown.lines_seen), timeout=timeout_s)
            shown.update(info, lines)
            return stamp, info

        ref = _fit_task.remote(self.train_loop, {"run": run, "tracker": tracker}, lean)
        try:
            return run_with_watchdog(lambda: _get(ref), last_progress, run.config.stall_timeout_s,
                                     abort=lambda: ray.cancel(ref, force=True), poll_s=1.0)
        except BaseException as e:       # stalled, Ctrl-C, failed: do not leave a run behind
            ray.cancel(ref, force=True)
            if isinstance(e, Exception) and not isinstance(e, TrainingStalledError):
                raise_for_unreadable_input(e, run.files, run.schema)   # names a file with a corrupt data page
            raise
        finally:
            try:
                last_progress(timeout_s=5.0)   # the last epoch's summary lines (not waiting long on a failed run)
            except Exception:  # noqa: BLE001 - the tracker may be gone with a failed run
                pass
            shown.close()
            ray.kill(tracker)


@ray.remote(num_cpus=0)
def _fit_task(train_loop, loop_config: dict, lean: bool = False) -> dict:
    """Build the datasets and the TorchTrainer and fit (a task, so that the watchdog can cancel it);
    ``lean``: without the placement-group cleaner and the preemption watcher (:func:`lean_fit`)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    from twotower.distributed.data import TwoTowerDataConfig, build_datasets
    from twotower.distributed.lean_trainer import trainer_class

    run: ResolvedRun = loop_config["run"]
    cfg = run.config
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    trainer = trainer_class(lean)(
        train_loop, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources, placement_strategy=cfg.placement_strategy),
        run_config=RunConfig(
            name=run.run_name, storage_path=run.storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),   # not every report's full metrics
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep,
                                               checkpoint_score_attribute=CHECKPOINT_SCORE,
                                               checkpoint_score_order="max")),
        datasets=build_datasets(run.dataset_dir, run.schema, seed=cfg.seed, files=run.files, model=cfg.model,
                                examples=cfg.examples),
        dataset_config=TwoTowerDataConfig())
    result = trainer.fit()
    return {"path": result.path, "best_checkpoints": result.best_checkpoints or [],
            "return_value": result.return_value}


def _get(ref) -> Any:
    """``ray.get`` that re-raises the task's own exception (e.g. ``WorkerGroupError``), not its wrapper."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(getattr(e, "cause", None), BaseException):
            raise e.cause from None
        raise


def _check_cluster(cfg: TrainConfig) -> None:
    """Fail fast instead of waiting forever for resources the cluster does not have.

    On a cluster joined through ``RAY_ADDRESS`` (``ray job submit``, ``cluster.yaml``) the autoscaler
    may still add nodes (GPU workers scale from zero), so a shortfall is only logged there.
    """
    res = ray.cluster_resources()
    need_cpu = cfg.num_workers * cfg.cpus_per_worker
    problems = []
    if res.get("CPU", 0) < need_cpu + 1:
        problems.append(f"{cfg.num_workers} workers x {cfg.cpus_per_worker} CPUs need {need_cpu:g} CPUs plus at "
                        f"least 1 for Ray Data; the Ray cluster has {res.get('CPU', 0):g}")
    if cfg.use_gpu and res.get("GPU", 0) < cfg.num_workers:
        problems.append(f"use_gpu=true needs {cfg.num_workers} GPUs; the Ray cluster has {res.get('GPU', 0):g}")
    if problems and os.environ.get("RAY_ADDRESS"):
        log.warning("%s; waiting for the autoscaler to add nodes", "; ".join(problems))
    elif problems:
        raise ConfigError(problems[0])
