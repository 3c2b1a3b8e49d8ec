"""Building the serving pieces from a checkpoint, a prepared dataset and a user cache.

Each serving process reads ``checkpoint.json`` once (:func:`twotower.model.checkpoint.read_checkpoint`)
and passes the :class:`~twotower.model.checkpoint.CheckpointInfo` on:

* :func:`load_serving_state` (ingress): schema, context mode and model version from the info alone (no
  weights), plus the user state (with the vocabularies of categorical and multi_hot user features),
  the catalogue and the context vocabularies of the dataset.
* :func:`load_encoder` (query encoder): the model weights and, in ``trilinear`` / ``scoring_layer``
  mode, the per-user table (loaded from ``user_cache`` or built from the dataset's user state).

``dataset`` defaults to the ``dataset_dir`` recorded in the checkpoint; it is checked against the
checkpoint with :func:`twotower.model.checkpoint.check_dataset`.
"""
from __future__ import annotations

import logging
from pathlib import Path

from twotower import storage
from twotower.data.vocab import read_vocab
from twotower.model.checkpoint import CheckpointInfo, check_dataset, load_checkpoint
from twotower.model.config import ContextMode
from twotower.model.schema import DatasetSchema
from twotower.model.sequence import history_length, uses_history_time

from .catalogue import Catalogue
from .context import context_vocabs
from .query import QueryEncoder
from .recommender import ServingState
from .user_cache import build_user_cache, load_user_cache
from .user_state import UserState

log = logging.getLogger("twotower.serve")


def resolve_dataset(info: CheckpointInfo, dataset: str | Path | None = None) -> str:
    """The dataset directory (absolute local path or URI) to serve from: ``dataset`` or the checkpoint's
    ``dataset_dir``, checked to be the dataset the model was trained on.

    Raises:
        FileNotFoundError: neither given nor recorded, or the directory has no schema.json.
        IncompatibleDatasetError (a ValueError): its vocabularies or features differ from the checkpoint's.
    """
    path = dataset if dataset is not None else info.dataset_dir
    if not path:
        raise FileNotFoundError(f"{info.path}: no dataset_dir recorded in checkpoint.json; pass --dataset")
    if not storage.is_file(storage.join(path, "schema.json")):
        raise FileNotFoundError(f"{path}: not a prepared dataset directory (no schema.json); pass --dataset")
    root = storage.normalize(path)
    check_dataset(info.schema, DatasetSchema.load(root), checkpoint=info.path, dataset_dir=root)
    return root


def load_user_state(info: CheckpointInfo, root: str) -> UserState:
    """The :class:`UserState` of prepared dataset ``root`` for the checkpoint's model: histories of the
    model's length (``twotower.model.sequence.history_length``: ``max_sequence_length`` for the
    transformer encoder, else the dataset's), with their timestamps for a model with time-gap buckets."""
    return UserState.load(root, info.schema, history_length(info.schema, info.model_config),
                          with_time=uses_history_time(info.model_config))


def load_serving_state(info: CheckpointInfo, dataset: str | Path | None = None) -> ServingState:
    """ServingState for the ingress (the dataset's vocabularies and interactions; no weights).

    Raises:
        FileNotFoundError / IncompatibleDatasetError: see :func:`resolve_dataset`.
    """
    root = resolve_dataset(info, dataset)
    cfg = info.model_config
    users = load_user_state(info, root)
    for f in info.schema.user_features:         # multi_hot values are raw values too (UserState.load reads
        if f.kind == "multi_hot" and f.name not in users.feature_vocabs:          # the categorical vocabularies)
            users.feature_vocabs[f.name] = read_vocab(root, f.name)
    return ServingState(schema=info.schema, mode=ContextMode(cfg.context_mode), model_version=info.model_version,
                        users=users, catalogue=Catalogue.load(root),
                        context_vocabs=context_vocabs(info.schema, root), rerank_depth=cfg.rerank_depth)


def load_encoder(info: CheckpointInfo, dataset: str | Path | None = None,
                 user_cache: str | Path | None = None, users: UserState | None = None) -> QueryEncoder:
    """The QueryEncoder of a checkpoint (its model version is ``info.model_version``).

    In ``trilinear`` / ``scoring_layer`` mode the per-user table comes from ``user_cache`` (checked
    against the model and the dataset's histories) or is built here from the dataset's user state:
    ``users`` when given (a process that also holds the :func:`load_serving_state` of ``info``, e.g. the
    offline :class:`~twotower.serve.offline.Recommender`, passes its ``state.users``), else
    ``UserState.load(dataset)``.

    Raises:
        CheckpointError (weights missing or corrupted), FileNotFoundError / IncompatibleDatasetError
        (see :func:`resolve_dataset`), UserCacheError.
    """
    loaded = load_checkpoint(info.path, info=info)
    table = None
    if ContextMode(info.model_config.context_mode) != ContextMode.USER_TOWER:
        state = users if users is not None else load_user_state(info, resolve_dataset(info, dataset))
        if user_cache is not None:
            table = load_user_cache(user_cache, info.model_sha256 or None, state)
        else:
            log.info("building the per-user table for %d users", state.num_users)
            table = build_user_cache(loaded.model, state)
    return QueryEncoder(loaded.model, table)
