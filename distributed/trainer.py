"""``TwoTowerTrainer(config).fit(dataset_dir)``: data-parallel training on Ray Train (TorchTrainer).

What ``fit`` does:

1. checks the inputs before starting anything (schema, the footer and columns of every train/valid
   parquet file, batch size vs rows per worker, ``resume_from`` compatibility, enough CPUs/GPUs in
   the cluster, only logged on a cluster joined through ``RAY_ADDRESS``, where the autoscaler may add
   nodes) and raises ConfigError / DataFormatError early; ``skip_bad_files`` leaves bad files out
   instead (a WARNING per file; listed in ``summary.json``);
2. starts a local Ray runtime when none is initialised (``start_local_ray``) and shuts it down
   afterwards; an already initialised runtime (e.g. a test fixture, ``ray.init(address=...)``) is
   used as is;
3. runs ``TorchTrainer.fit`` inside a Ray task (so it can be force-cancelled) under the stall
   watchdog (``watchdog.run_with_watchdog``; ``TrainingStalledError`` after ``stall_timeout_s``
   without progress);
4. on a failed fit involving an I/O or Arrow error, finds the input file whose data pages do not
   decode and raises DataFormatError naming it (chained to the original error);
5. copies the best checkpoint (highest ``valid_recall@monitor_k``) to ``RUN_DIR/best_checkpoint`` and
   writes ``metrics.csv``, ``training_curves.png``, ``config.yaml`` and ``summary.json``.

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
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ray

from twotower.distributed.artifacts import plot_training_curves, write_metrics_csv, write_summary
from twotower.distributed.config import ConfigError, TrainConfig
from twotower.distributed.data import check_splits, raise_for_unreadable_input
from twotower.distributed.local_ray import use_loopback_only
from twotower.distributed.train_loop import monitor_key, train_loop_per_worker
from twotower.distributed.watchdog import ProgressTracker, TrainingStalledError, run_with_watchdog
from twotower import storage
from twotower.model.checkpoint import CheckpointError, read_checkpoint_meta
from twotower.model.schema import DatasetSchema

log = logging.getLogger(__name__)
OBJECT_STORE_CAP = 2 << 30       # local runs: min(2 GiB, 30% of RAM) of shared memory for Ray Data blocks


@dataclass
class FitResult:
    """Outcome of :meth:`TwoTowerTrainer.fit`.

    best_checkpoint: directory loadable by ``load_checkpoint`` (a copy, inside ``run_dir``).
    metrics: the reported metrics of the best epoch. history: reported metrics of every epoch.
    run_dir: directory holding the artifacts: a ``Path`` for a local ``storage_path``, the URI (``str``,
    as is ``best_checkpoint``) for a URI one. weight_digests: sha256 of each worker's final weights.
    resumed_after_epochs: completed epochs after which the run continued from its own checkpoint
    (worker failures); empty for an undisturbed run. skipped_files: ``{"path", "reason"}`` of the
    input files left out by ``skip_bad_files``.
    """

    best_checkpoint: Path | str
    metrics: dict
    history: list[dict]
    run_dir: Path | str
    weight_digests: list[str] = field(default_factory=list)
    stopped_early: bool = False
    ray_result_path: str = ""
    resumed_after_epochs: list[int] = field(default_factory=list)
    skipped_files: list[dict] = field(default_factory=list)


def start_local_ray(cfg: TrainConfig) -> bool:
    """``ray.init`` unless Ray is initialised; returns True when this call started/connected Ray.

    Local runtime: ``num_cpus = max(os.cpu_count(), ceil(num_workers * cpus_per_worker) + 2)`` logical
    CPUs, so Ray Data read/map tasks always have CPUs beside the training workers (with exactly as
    many CPUs as workers, the data pipeline starves and ``fit`` hangs). The dashboard is started
    because Ray Train's placement-group cleaner queries the state API. The runtime listens on 127.0.0.1
    only (:func:`~twotower.distributed.local_ray.use_loopback_only`). With ``RAY_ADDRESS`` set, the
    existing cluster is joined instead.
    """
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level=logging.WARNING)
        return True
    need = math.ceil(cfg.num_workers * cfg.cpus_per_worker) + 2
    use_loopback_only()          # every Ray service on 127.0.0.1 (see twotower.distributed.local_ray)
    total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    ray.init(num_cpus=max(os.cpu_count() or 1, need), include_dashboard=True, logging_level=logging.WARNING,
             object_store_memory=int(min(OBJECT_STORE_CAP, 0.3 * total_ram)))
    return True


@ray.remote(num_cpus=0)
def _run_torch_trainer(train_loop, loop_config: dict, cfg_dict: dict, dataset_dir: str, storage_path: str,
                       run_name: str, seed: int, files: dict[str, list[str]]) -> dict:
    """Build datasets + TorchTrainer and fit (runs as a task so the watchdog can cancel it)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from twotower.distributed.data import TwoTowerDataConfig, build_datasets

    cfg = TrainConfig.model_validate(cfg_dict)
    schema = DatasetSchema.load(dataset_dir)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources, placement_strategy=cfg.placement_strategy),
        run_config=RunConfig(
            name=run_name, storage_path=storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),   # not every report's full metrics
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep,
                                               checkpoint_score_attribute=monitor_key(cfg),
                                               checkpoint_score_order="max")),
        datasets=build_datasets(dataset_dir, schema, seed=seed, files=files), dataset_config=TwoTowerDataConfig())
    result = trainer.fit()
    return {"path": result.path, "best_checkpoints": result.best_checkpoints or [],
            "return_value": result.return_value}


class TwoTowerTrainer:
    """Distributed trainer for one :class:`TrainConfig`; see the module docstring."""

    def __init__(self, config: TrainConfig, train_loop: Callable[[dict], Any] = train_loop_per_worker):
        """``train_loop`` replaces the per-worker function (tests, custom loops); it gets the same
        ``config`` dict as :func:`train_loop_per_worker` and must ``ray.train.report`` like it."""
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
        cfg, dataset_dir = self.config, storage.normalize(dataset_dir)
        if cfg.resume_from:      # workers run in the run directory: make the path absolute here
            cfg = cfg.model_copy(update={"resume_from": storage.normalize(cfg.resume_from)})
        schema = DatasetSchema.load(dataset_dir)
        files, split_rows, skipped = check_splits(dataset_dir, schema, ("train", "valid"), cfg.skip_bad_files)
        for bad in skipped:
            log.warning("skip_bad_files: leaving out %s: %s", bad.path, bad.reason)
        rows = split_rows["train"]
        if rows // cfg.num_workers < cfg.batch_size:
            raise ConfigError(f"batch_size {cfg.batch_size} is larger than the {rows // cfg.num_workers} train "
                              f"rows each of {cfg.num_workers} workers gets; lower batch_size or num_workers")
        _check_resume(cfg, schema)
        run_name = cfg.run_name or f"{schema.name or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
        storage_path, run_dir = _storage_and_run_dir(cfg.storage_path, run_name)
        if storage.exists(storage.join(run_dir, "summary.json")):
            raise ConfigError(f"run directory {run_dir} already holds a finished run (Ray would restore it and "
                              f"ignore this config); choose another run_name or remove that directory")
        storage.makedirs(run_dir)
        storage.write_bytes(storage.join(run_dir, "config.yaml"), cfg.to_yaml().encode())
        owned = start_local_ray(cfg)
        try:
            _check_cluster(cfg)
            tracker = ProgressTracker.remote()
            loop_config = {"train_config": cfg.model_dump(mode="json"), "dataset_dir": str(dataset_dir),
                           "tracker": tracker,
                           "steps_per_epoch": min(rows // cfg.num_workers // cfg.batch_size,
                                                  cfg.max_steps_per_epoch or 1 << 62)}
            ref = _run_torch_trainer.remote(self.train_loop, loop_config, cfg.model_dump(mode="json"),
                                            dataset_dir, storage_path, run_name, cfg.seed, files)
            try:
                out = run_with_watchdog(lambda: _get(ref), lambda: ray.get(tracker.last.remote(), timeout=30),
                                        cfg.stall_timeout_s, abort=lambda: ray.cancel(ref, force=True))
            except BaseException as e:       # stalled, Ctrl-C, failed: do not leave a run behind
                ray.cancel(ref, force=True)
                if isinstance(e, Exception) and not isinstance(e, TrainingStalledError):
                    raise_for_unreadable_input(e, files, schema)   # names a file with a corrupt data page
                raise
            finally:
                ray.kill(tracker)
            result = self._finish(out, run_dir, dataset_dir, [b.as_dict() for b in skipped])
        finally:
            if owned:
                ray.shutdown()
        return result

    def _finish(self, out: dict, run_dir: Path | str, dataset_dir: str, skipped_files: list[dict]) -> FitResult:
        """Pick and copy the best checkpoint; write metrics.csv, the curves and summary.json (for a URI
        ``run_dir``: into a local temporary directory, then uploaded with summary.json last)."""
        if not isinstance(run_dir, Path):
            local = Path(tempfile.mkdtemp(prefix="twotower-run-"))
            try:
                result = self._write_artifacts(out, local, dataset_dir, skipped_files, shown_dir=run_dir)
                storage.upload_dir(local, run_dir, last="summary.json")
            finally:
                shutil.rmtree(local, ignore_errors=True)
            return result
        return self._write_artifacts(out, run_dir, dataset_dir, skipped_files, shown_dir=run_dir)

    def _write_artifacts(self, out: dict, run_dir: Path, dataset_dir: str, skipped_files: list[dict],
                         shown_dir: Path | str) -> FitResult:
        """The artifacts of :meth:`_finish` into local ``run_dir``; paths in the result and summary.json
        are under ``shown_dir`` (where they end up)."""
        key = monitor_key(self.config)
        candidates = [(c, m) for c, m in out["best_checkpoints"] if key in m]
        if not candidates:
            raise RuntimeError(f"training reported no checkpoint with {key!r} (nothing to restore)")
        best_ckpt, best_metrics = max(candidates, key=lambda cm: (cm[1][key], -cm[1]["epoch"]))
        target = run_dir / "best_checkpoint"
        tmp = run_dir / ".best_checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        best_ckpt.to_directory(str(tmp))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        ret = out.get("return_value") or {}
        history = ret.get("history") or sorted((m for _, m in out["best_checkpoints"]), key=lambda m: m["epoch"])
        best = next((h for h in history if h["epoch"] == best_metrics["epoch"]), best_metrics)
        write_metrics_csv(history, run_dir / "metrics.csv")
        plot_training_curves(history, run_dir / "training_curves.png", key)
        shown_target = target if isinstance(shown_dir, Path) else storage.join(shown_dir, "best_checkpoint")
        result = FitResult(best_checkpoint=shown_target, metrics=dict(best), history=list(history), run_dir=shown_dir,
                           weight_digests=list(ret.get("weight_digests") or []),
                           stopped_early=bool(ret.get("stopped_early")), ray_result_path=str(out["path"]),
                           resumed_after_epochs=list(ret.get("resumed_after_epochs") or []),
                           skipped_files=skipped_files)
        if result.resumed_after_epochs:
            log.warning("training recovered from worker failure(s): resumed from the run's checkpoint after "
                        "epoch(s) %s", result.resumed_after_epochs)
        write_summary(run_dir / "summary.json", {
            "dataset_dir": str(dataset_dir), "best_epoch": best["epoch"], "monitor": key,
            "best_metrics": best, "epochs_run": len(history), "stopped_early": result.stopped_early,
            "best_checkpoint": str(shown_target), "ray_result_path": result.ray_result_path,
            "weight_digests": result.weight_digests, "resumed_after_epochs": result.resumed_after_epochs,
            "skipped_files": skipped_files})
        return result


def _get(ref) -> Any:
    """``ray.get`` that re-raises the task's own exception (e.g. ``WorkerGroupError``), not its wrapper."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(getattr(e, "cause", None), BaseException):
            raise e.cause from None
        raise


def _storage_and_run_dir(storage_path: str, run_name: str) -> tuple[str, Path | str]:
    """(storage path/URI for RunConfig, run directory: a local ``Path`` or the URI ``<storage_path>/<run_name>``);
    relative local paths and ``file://`` URIs become absolute local paths."""
    if storage.is_uri(storage_path) and not storage_path.startswith("file://"):
        return storage_path, storage.join(storage_path, run_name)
    local = Path(storage_path.removeprefix("file://")).expanduser().resolve()
    return str(local), local / run_name


def _check_resume(cfg: TrainConfig, schema: DatasetSchema) -> None:
    """``resume_from`` must be a checkpoint of the same model config and vocabulary sizes, not finished."""
    if not cfg.resume_from:
        return
    try:
        meta = read_checkpoint_meta(cfg.resume_from)
    except CheckpointError as e:
        raise ConfigError(f"resume_from: {e}") from e
    if meta.get("model_config") != cfg.model.model_dump(mode="json"):
        theirs, ours = meta.get("model_config") or {}, cfg.model.model_dump(mode="json")
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise ConfigError(f"resume_from {cfg.resume_from}: model config differs in {diff}")
    s = meta.get("schema") or {}
    if (s.get("num_users"), s.get("num_items")) != (schema.num_users, schema.num_items):
        raise ConfigError(f"resume_from {cfg.resume_from}: trained on {s.get('num_users')} users / "
                          f"{s.get('num_items')} items, dataset has {schema.num_users} / {schema.num_items}")
    if int(meta.get("epoch") or 0) >= cfg.epochs:
        raise ConfigError(f"resume_from {cfg.resume_from} already completed epoch {meta.get('epoch')}; "
                          f"set epochs > {meta.get('epoch')}")


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
