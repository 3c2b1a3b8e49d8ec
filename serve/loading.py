"""Building the serving pieces from a checkpoint directory, a prepared dataset and a user cache.

* :func:`load_serving_state` (ingress): schema, context mode and model version from ``checkpoint.json``
  alone (no weights), plus the user state and catalogue of the dataset.
* :func:`load_encoder` (query encoder): the model weights and, in ``trilinear`` / ``scoring_layer``
  mode, the per-user table (loaded from ``user_cache`` or built from the dataset's user state).

``dataset`` defaults to the ``dataset_dir`` recorded in the checkpoint.
"""
from __future__ import annotations

import logging
from pathlib import Path

from twotower import storage
from twotower.model.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_meta
from twotower.model.config import ContextMode, ModelConfig
from twotower.model.schema import DatasetSchema

from .catalogue import Catalogue
from .context import context_vocabs
from .query import QueryEncoder
from .recommender import ServingState
from .user_cache import build_user_cache, load_user_cache
from .user_state import UserState

log = logging.getLogger("twotower.serve")


def model_version(meta: dict) -> str:
    """The model version reported by the API: the first 12 hex digits of model.pt's sha256."""
    digest = (meta.get("sha256") or {}).get("model.pt")
    return digest[:12] if digest else "unknown"


def resolve_dataset(meta: dict, dataset: str | Path | None, checkpoint: str | Path) -> str:
    """The dataset directory (absolute local path or URI) to serve from: ``dataset`` or the checkpoint's
    ``dataset_dir``.

    Raises:
        FileNotFoundError: neither given nor recorded, or the directory has no schema.json.
    """
    path = dataset if dataset is not None else meta.get("dataset_dir")
    if not path:
        raise FileNotFoundError(f"{checkpoint}: no dataset_dir recorded in checkpoint.json; pass --dataset")
    if not storage.is_file(storage.join(path, "schema.json")):
        raise FileNotFoundError(f"{path}: not a prepared dataset directory (no schema.json); pass --dataset")
    return storage.normalize(path)


def check_dataset(schema: DatasetSchema, dataset_schema: DatasetSchema, dataset: str) -> None:
    """Raise ValueError unless the dataset's vocabularies are the ones the model was trained with."""
    for name in ("num_users", "num_items", "history_length"):
        if getattr(schema, name) != getattr(dataset_schema, name):
            raise ValueError(f"{dataset}: {name} is {getattr(dataset_schema, name)}, the checkpoint's schema "
                             f"says {getattr(schema, name)} (serve the dataset the model was trained on)")


def load_serving_state(checkpoint: str | Path, dataset: str | Path | None = None) -> ServingState:
    """ServingState for the ingress (reads checkpoint.json, the dataset's vocabularies and interactions).

    Raises:
        CheckpointError / FileNotFoundError / ValueError: unreadable checkpoint, dataset missing or not
            matching the checkpoint.
    """
    meta = read_checkpoint_meta(checkpoint)
    try:
        schema = DatasetSchema.from_dict(meta["schema"])
        cfg = ModelConfig.model_validate(meta["model_config"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{checkpoint}: checkpoint.json has no valid schema/model_config: {e}") from e
    root = resolve_dataset(meta, dataset, checkpoint)
    check_dataset(schema, DatasetSchema.load(root), root)
    return ServingState(schema=schema, mode=ContextMode(cfg.context_mode), model_version=model_version(meta),
                        users=UserState.load(root, schema), catalogue=Catalogue.load(root),
                        context_vocabs=context_vocabs(schema, root), rerank_depth=cfg.rerank_depth)


def load_encoder(checkpoint: str | Path, dataset: str | Path | None = None,
                 user_cache: str | Path | None = None) -> tuple[QueryEncoder, str]:
    """(QueryEncoder, model version) for a checkpoint.

    In ``trilinear`` / ``scoring_layer`` mode the per-user table comes from ``user_cache`` (checked
    against the model and the dataset's histories) or is built here from the dataset's user state.

    Raises:
        CheckpointError, FileNotFoundError, ValueError, UserCacheError.
    """
    loaded = load_checkpoint(checkpoint)
    version = model_version(loaded.meta)
    table = None
    if ContextMode(loaded.model_config.context_mode) != ContextMode.USER_TOWER:
        root = resolve_dataset(loaded.meta, dataset, checkpoint)
        check_dataset(loaded.schema, DatasetSchema.load(root), root)
        state = UserState.load(root, loaded.schema)
        sha = (loaded.meta.get("sha256") or {}).get("model.pt")
        if user_cache is not None:
            table = load_user_cache(user_cache, sha, state)
        else:
            log.info("building the per-user table for %d users", state.num_users)
            table = build_user_cache(loaded.model, state)
    return QueryEncoder(loaded.model, table), version
