"""A training run resolved once, on the driver: :func:`resolve_run` -> :class:`ResolvedRun`.

Everything a worker needs besides the data shards is decided here, before Ray starts: the validated
config, the dataset's schema, the sequence files that passed the footer and column checks (and
the ones ``skip_bad_files`` left out), train/valid examples per the files' footers, steps per epoch, the run directory, and the ``resume_from``
checkpoint's ``checkpoint.json`` with its compatibility checks done. The frozen result is the only
thing the driver hands to the Ray Train workers (``train_loop_config={"run": run, ...}``), so a
worker reads no ``schema.json`` and validates no config of its own.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from twotower import storage
from twotower.data.parquet_check import BadParquetFile
from twotower.data.splits import check_splits
from twotower.distributed.config import ConfigError, TrainConfig
from twotower.model.checkpoint import (CheckpointError, CheckpointInfo, IncompatibleDatasetError, check_dataset,
                                       read_checkpoint)
from twotower.model.schema import DatasetSchema

log = logging.getLogger("twotower.train")


@dataclass(frozen=True)
class ResolvedRun:
    """One training run, resolved (see the module docstring).

    Attributes:
        config: the validated TrainConfig (``resume_from`` made absolute).
        dataset_dir: absolute local path or URI of the prepared dataset. schema: its ``schema.json``.
        files: sequence files per split (``"train"``, ``"valid"``) to read: the same files for both
            (every split is cut from them). rows: examples (= interactions) per split, from the files'
            ``twotower.events`` footers.
        skipped: files left out by ``skip_bad_files`` (empty otherwise).
        steps_per_epoch: optimizer steps per worker and epoch (``drop_last`` batches, capped by
            ``max_steps_per_epoch``); for ``examples: sequence`` an estimate from the footers
            (:func:`estimated_windows`; shown by the progress bar, never a cap: see :attr:`step_cap`).
        steps_per_pass: batches per worker in one pass over the train split (``drop_last``; an estimate
            for ``examples: sequence``), uncapped.
        run_name / storage_path / run_dir: Ray Train's ``RunConfig`` name and storage path, and
            ``<storage_path>/<run_name>`` (a local ``Path`` or a URI string).
        resume: ``checkpoint.json`` of ``resume_from`` (None when not resuming).
    """

    config: TrainConfig
    dataset_dir: str
    schema: DatasetSchema
    files: dict[str, list[str]]
    rows: dict[str, int]
    steps_per_epoch: int
    steps_per_pass: int
    run_name: str
    storage_path: str
    run_dir: Path | str
    skipped: tuple[BadParquetFile, ...] = ()
    resume: CheckpointInfo | None = field(default=None, repr=False)

    @property
    def step_cap(self) -> int:
        """Steps after which a worker ends an epoch: ``steps_per_epoch`` for per-event examples (exact),
        only ``max_steps_per_epoch`` for sequence windows (their count is estimated)."""
        if self.config.examples == "event":
            return self.steps_per_epoch
        return self.config.max_steps_per_epoch or 1 << 62


def estimated_windows(train_interactions: int, users: int, length: int) -> int:
    """Sequence windows of a train split (``cut_windows``) estimated from counts alone: about
    (T - U) / L + U / 2 for T train interactions of U users (each user's targets fill windows of L
    from the end, the oldest one half full on average), at most T - U, at least 1. ML-1M: 7,930 estimated,
    8,619 cut at L=200; 22,661 vs 22,546 at L=50."""
    return max(1, min(train_interactions - users, (train_interactions - users) // length + users // 2))


def resolve_run(config: TrainConfig, dataset_dir: str | Path) -> ResolvedRun:
    """Check the inputs and resolve the run; nothing is started or written.

    Raises:
        ConfigError: batch larger than a worker's train rows, an incompatible or finished
            ``resume_from``, or a ``run_name`` whose directory holds a finished run.
        SchemaError / FileNotFoundError: not a prepared dataset. DataFormatError: a bad sequence file
            (unless ``skip_bad_files``); names the file.
    """
    dataset_dir = storage.normalize(dataset_dir)
    config, switched = config.on_gpus()
    if switched:
        log.warning(switched)
    if config.resume_from:      # workers run in the run directory: make the path absolute here
        config = config.model_copy(update={"resume_from": storage.normalize(config.resume_from)})
    schema = DatasetSchema.load(dataset_dir)
    files, rows, skipped = check_splits(dataset_dir, schema, ("train", "valid"), config.skip_bad_files)
    train = rows["train"]
    if config.examples == "sequence":
        train = estimated_windows(train, schema.num_users - 1, config.model.max_sequence_length)
    per_worker = train // config.num_workers
    if per_worker < config.batch_size:
        unit = "train rows" if config.examples == "event" else "train windows (estimated)"
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {per_worker} {unit} each of "
                          f"{config.num_workers} workers gets; lower batch_size or num_workers")
    resume = _resume_info(config, schema, dataset_dir)
    run_name = config.run_name or f"{schema.name or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage_path, run_dir = _storage_and_run_dir(config.storage_path, run_name)
    if storage.exists(storage.join(run_dir, "summary.json")):
        raise ConfigError(f"run directory {run_dir} already holds a finished run (Ray would restore it and "
                          f"ignore this config); choose another run_name or remove that directory")
    per_pass = per_worker // config.batch_size
    return ResolvedRun(config=config, dataset_dir=dataset_dir, schema=schema, files=files, rows=rows,
                       steps_per_epoch=min(per_pass, config.max_steps_per_epoch or 1 << 62),
                       steps_per_pass=per_pass, run_name=run_name,
                       storage_path=storage_path, run_dir=run_dir, skipped=tuple(skipped), resume=resume)


def _resume_info(cfg: TrainConfig, schema: DatasetSchema, dataset_dir: str) -> CheckpointInfo | None:
    """``resume_from``'s checkpoint.json, checked: same model config, a compatible dataset
    (:func:`~twotower.model.checkpoint.check_dataset`), fewer completed epochs than ``epochs``."""
    if not cfg.resume_from:
        return None
    try:
        info = read_checkpoint(cfg.resume_from)
    except CheckpointError as e:
        raise ConfigError(f"resume_from: {e}") from e
    theirs, ours = info.meta.get("model_config") or {}, cfg.model.model_dump(mode="json")
    if theirs != ours:
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise ConfigError(f"resume_from {cfg.resume_from}: model config differs in {diff}")
    try:
        check_dataset(info.schema, schema, checkpoint=cfg.resume_from, dataset_dir=dataset_dir)
    except IncompatibleDatasetError as e:
        raise ConfigError(f"resume_from: {e}") from e
    epoch = int(info.meta.get("epoch") or 0)
    if epoch >= cfg.epochs:
        raise ConfigError(f"resume_from {cfg.resume_from} already completed epoch {epoch}; set epochs > {epoch}")
    return info


def _storage_and_run_dir(storage_path: str, run_name: str) -> tuple[str, Path | str]:
    """(storage path/URI for RunConfig, run directory: a local ``Path`` or the URI ``<storage_path>/<run_name>``);
    relative local paths and ``file://`` URIs become absolute local paths."""
    if storage.is_uri(storage_path) and not storage_path.startswith("file://"):
        return storage_path, storage.join(storage_path, run_name)
    local = Path(storage_path.removeprefix("file://")).expanduser().resolve()
    return str(local), local / run_name
