"""The one checkpoint format that training, indexing and serving all use.

A checkpoint is a directory:

    model.pt          state dict (weights and the feature-table buffers); loaded with
                      ``torch.load(weights_only=True)``, so loading never unpickles arbitrary objects
    checkpoint.json   format_version, schema, model config, train config, dataset_dir, epoch, metrics,
                      sha256 of model.pt (and optimizer.pt when present)
    optimizer.pt      optional optimizer state (for resuming), also weights_only

Reading accepts a local directory or a URI (``s3://``, ``gs://``, ...; see :mod:`twotower.storage`):
``checkpoint.json`` is read in place, and a URI checkpoint is copied to a local temporary directory for
``torch.load`` (removed afterwards). Writing is local (Ray Train uploads the epoch checkpoints).
"""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from twotower import storage
from .config import ModelConfig
from .schema import DatasetSchema
from .twotower import TwoTowerModel

CHECKPOINT_FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint directory that is missing files, corrupted (checksum mismatch) or of an unknown format."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class LoadedCheckpoint:
    """A loaded checkpoint: ``model`` in eval mode on the requested device, its parsed ``checkpoint.json``
    (``info``; ``schema``, ``model_config``, ``train_config``, ``meta``, ``model_sha256`` read from it) and
    the optimizer state (None when the checkpoint has none)."""

    model: TwoTowerModel
    info: "CheckpointInfo"
    optimizer_state: dict | None

    schema = property(lambda self: self.info.schema)
    model_config = property(lambda self: self.info.model_config)
    meta = property(lambda self: self.info.meta)
    train_config = property(lambda self: self.info.meta.get("train_config", {}))
    model_sha256 = property(lambda self: self.info.model_sha256)


def save_checkpoint(model: torch.nn.Module, directory: str | Path, *, train_config: dict | None = None,
                    dataset_dir: str | None = None, metrics: dict | None = None, epoch: int | None = None,
                    optimizer_state: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``model`` (TwoTowerModel or a DDP wrapper of one) to ``directory`` (created). Returns the path."""
    core = getattr(model, "module", model)
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in core.state_dict().items()}, path / "model.pt")
    files = {"model.pt": sha256_file(path / "model.pt")}
    if optimizer_state is not None:
        torch.save(optimizer_state, path / "optimizer.pt")
        files["optimizer.pt"] = sha256_file(path / "optimizer.pt")
    meta: dict[str, Any] = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "schema": asdict(core.schema),
        "model_config": core.cfg.model_dump(mode="json"),
        "train_config": train_config or {},
        "dataset_dir": str(dataset_dir) if dataset_dir is not None else None,
        "epoch": epoch,
        "metrics": metrics or {},
        "sha256": files,
        "extra": extra or {},
    }
    (path / "checkpoint.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=float))
    return path


def read_checkpoint_meta(directory: str | Path) -> dict:
    """Read and validate ``checkpoint.json`` of a local or URI checkpoint directory (the raw dict;
    :func:`read_checkpoint` parses it).

    Raises:
        CheckpointError: missing, not JSON, or of an unknown format version (the message names the file).
    """
    path = storage.join(directory, "checkpoint.json")
    meta = storage.read_json(path, CheckpointError, "missing (not a twotower checkpoint directory)")
    if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta.get('format_version')!r} is not supported "
                              f"(expected {CHECKPOINT_FORMAT_VERSION})")
    return meta


@dataclass(frozen=True)
class CheckpointInfo:
    """``checkpoint.json`` of one checkpoint, read and parsed once (no weights loaded).

    Attributes:
        path: the checkpoint directory as given (local path or URI). meta: the raw JSON dict.
        schema / model_config: what the model was built from. model_sha256: hex sha256 of ``model.pt``
        ("" when not recorded); model_version: its first 12 digits ("unknown" when not recorded), the
        version that the index manifest, the user cache and the HTTP API name.
    """

    path: str
    meta: dict
    schema: DatasetSchema
    model_config: ModelConfig

    @property
    def model_sha256(self) -> str:
        return (self.meta.get("sha256") or {}).get("model.pt") or ""

    @property
    def model_version(self) -> str:
        return self.model_sha256[:12] or "unknown"

    @property
    def dataset_dir(self) -> str | None:
        return self.meta.get("dataset_dir")


def read_checkpoint(directory: str | Path) -> CheckpointInfo:
    """:func:`read_checkpoint_meta` parsed into a :class:`CheckpointInfo`.

    Raises:
        CheckpointError: unreadable ``checkpoint.json`` or one without a valid schema / model_config.
    """
    meta = read_checkpoint_meta(directory)
    try:
        schema = DatasetSchema.from_dict(meta["schema"])
        cfg = ModelConfig.model_validate(meta["model_config"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{storage.join(directory, 'checkpoint.json')}: no valid schema/model_config: "
                              f"{e}") from e
    return CheckpointInfo(str(directory), meta, schema, cfg)


class IncompatibleDatasetError(ValueError):
    """A dataset whose vocabularies or features are not the ones a checkpoint was trained with."""


def check_dataset(trained: DatasetSchema, dataset: DatasetSchema, *, checkpoint: str | Path,
                  dataset_dir: str | Path) -> None:
    """The one checkpoint-vs-dataset check (train's ``resume_from``, evaluate, index, serve).

    The model's ID tables and feature embeddings are sized by the schema it was trained on, and its
    encoders standardise, bucketize and project with that schema's statistics, so the dataset must agree
    on ``num_users``, ``num_items``, ``history_length`` and every user, item and context feature (name,
    kind, cardinality, vector dim, numeric mean / std, bucket boundaries, source).

    Raises:
        IncompatibleDatasetError: naming the first field that differs, both values, the checkpoint and
            the dataset.
    """
    def features(s: DatasetSchema, group: str) -> list[tuple]:
        return [(f.name, f.kind, f.cardinality, f.dim, f.mean, f.std, f.boundaries, f.source) for f in getattr(s, group)]

    for name in ("num_users", "num_items", "history_length"):
        ours, theirs = getattr(trained, name), getattr(dataset, name)
        if ours != theirs:
            raise IncompatibleDatasetError(
                f"checkpoint {checkpoint} was trained on {name} {ours}, but {dataset_dir} has {theirs} "
                f"(use the dataset the model was trained on)")
    for group in ("user_features", "item_features", "context_features"):
        ours, theirs = features(trained, group), features(dataset, group)
        if ours != theirs:
            diff = sorted({f[0] for f in set(ours) ^ set(theirs)})
            raise IncompatibleDatasetError(
                f"checkpoint {checkpoint} was trained on other {group} than {dataset_dir} has (differ in "
                f"{diff}: name, kind, cardinality, dim, mean/std, boundaries or source)")


def _load_tensors(path: Path) -> dict:
    """``torch.load(weights_only=True)``: tensors, containers and primitives only. A pickle that asks for
    anything else (an arbitrary class or callable, e.g. a ``__reduce__`` payload) is refused before it
    runs: CheckpointError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        reasons = [ln for ln in lines[1:] if not ln.startswith(("Check the documentation", "Please file an issue"))]
        why = " ".join(reasons[:2]) if reasons else (lines[0] if lines else type(e).__name__)
        raise CheckpointError(f"{path}: refused to load, it is not a plain tensor file ({why[:200]})") from e
    except (RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable torch file: {e}") from e


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu",
                    verify: bool = True, info: CheckpointInfo | None = None) -> LoadedCheckpoint:
    """Load a checkpoint directory written by :func:`save_checkpoint` (local path or URI).

    Raises:
        CheckpointError: missing files, sha256 mismatch (when ``verify``), unknown format version, a
            file that is not a plain tensor pickle (objects other than tensors/containers/primitives are
            never unpickled), or a state dict that does not fit the stored schema/config. The message
            names the file as given (the URI, not the temporary copy).

    ``info``: this directory's :func:`read_checkpoint`, when the caller has read it already (then
    ``checkpoint.json`` is not read again).
    """
    info = info if info is not None else read_checkpoint(directory)     # in place, also for a URI
    local, temporary = storage.local_copy(directory)
    try:
        return _load_local(local, map_location, verify, info)
    except CheckpointError as e:
        if not temporary:
            raise
        raise CheckpointError(str(e).replace(str(local), str(directory).rstrip("/"))) from e
    finally:
        if temporary:
            shutil.rmtree(local, ignore_errors=True)


def _load_local(path: Path, map_location: str | torch.device, verify: bool, info: CheckpointInfo) -> LoadedCheckpoint:
    for name, digest in info.meta.get("sha256", {}).items():
        if not (path / name).exists():
            raise CheckpointError(f"{path / name}: missing")
        if verify and sha256_file(path / name) != digest:
            raise CheckpointError(f"{path / name}: sha256 mismatch (file corrupted or modified)")
    schema, cfg = info.schema, info.model_config
    model = TwoTowerModel(schema, cfg)
    state = _load_tensors(path / "model.pt")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path / 'model.pt'}: does not match the stored schema/config: {e}") from e
    optimizer_state = None
    if (path / "optimizer.pt").exists():
        optimizer_state = _load_tensors(path / "optimizer.pt")
    model.to(map_location).eval()
    return LoadedCheckpoint(model, info, optimizer_state)
