"""The per-user representation table of ``trilinear`` / ``scoring_layer`` serving.

In those modes the user tower does not see the context, so ``user_rep(u) = model.user_embeddings(u,
history(u))`` can be computed once per (checkpoint, user state) and a request only multiplies it by its
context embedding (trilinear) or feeds it to the scoring head. :func:`build_user_cache` computes the
float32 (num_users, D) table (row 0, the unknown user with an empty history, is computed too but never
read: cold-start users are encoded per request).

When it is built: at encoder startup by default (ML-1M: 6k users, well under a second); for large user
bases write it once with ``twotower serve --write-user-cache DIR`` and serve with ``--user-cache DIR``.
Index-job hook (not wired): after publishing the index, the job can call ``build_user_cache(model,
UserState.load(dataset))`` and ``save_user_cache(OUT/user_cache, ...)``; serving then passes that
directory as ``user_cache``.

Directory layout::

    DIR/user_cache.npy    float32 (num_users, D)
    DIR/user_cache.json   {"model_sha256", "user_state", "num_users", "dim", "sha256"}

``user_state`` is :func:`user_state_fingerprint` of the histories it was built from; loading checks it
and the model sha256, so a stale table is refused rather than silently serving other histories.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch

from twotower import storage
from twotower.model.twotower import TwoTowerModel

from .user_state import UserState

ARRAY, META = "user_cache.npy", "user_cache.json"


class UserCacheError(ValueError):
    """A user cache directory that is missing, corrupted, or built for another model / user state."""


def user_state_fingerprint(state: UserState) -> str:
    """sha256 (hex, first 16) of the state's offsets and items (and timestamps, when it keeps them): equal
    for equal histories."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(state.offsets).tobytes())
    h.update(np.ascontiguousarray(state.items).tobytes())
    h.update(str(state.history_length).encode())
    if state.times is not None:
        h.update(np.ascontiguousarray(state.times).tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def build_user_cache(model: TwoTowerModel, state: UserState, batch_size: int = 4096) -> np.ndarray:
    """float32 (num_users, D): ``model.user_embeddings(u, state.history(u))`` for every user index u.

    Raises:
        ContextDependentError: ``user_tower`` mode with context (no context-free user representation).
    """
    model = model.eval()
    n = state.num_users
    out = np.zeros((n, model.cfg.final_embedding_dim), np.float32)
    for lo in range(0, n, batch_size):
        idx = np.arange(lo, min(lo + batch_size, n))
        hist = state.histories(idx)
        times = torch.from_numpy(state.history_times(idx)) if model.uses_history_time else None
        out[idx] = model.user_embeddings(torch.from_numpy(idx.astype(np.int64)), torch.from_numpy(hist),
                                         times).numpy()
    return out


def save_user_cache(directory: str | Path, table: np.ndarray, model_sha256: str | None, state: UserState) -> str:
    """Write ``table`` and its metadata to ``directory`` (local path, created, or URI). Returns the directory."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(table, np.float32))
    raw = buf.getvalue()
    meta = {"model_sha256": model_sha256, "user_state": user_state_fingerprint(state),
            "num_users": int(table.shape[0]), "dim": int(table.shape[1]), "sha256": hashlib.sha256(raw).hexdigest()}
    storage.makedirs(directory)
    storage.write_bytes(storage.join(directory, ARRAY), raw)
    storage.write_bytes(storage.join(directory, META), json.dumps(meta, indent=2, sort_keys=True).encode())
    return str(directory)


def load_user_cache(directory: str | Path, model_sha256: str | None = None, state: UserState | None = None
                    ) -> np.ndarray:
    """Read a table written by :func:`save_user_cache`, checking it against the model and user state.

    Raises:
        UserCacheError: files missing, sha256 mismatch, or built from another model / user state.
    """
    meta_path, array_path = storage.join(directory, META), storage.join(directory, ARRAY)
    meta = storage.read_json(meta_path, UserCacheError, "missing (not a user cache directory)")
    try:
        raw = storage.read_bytes(array_path)
    except FileNotFoundError as e:
        raise UserCacheError(f"{e.filename or directory}: missing (not a user cache directory)") from e
    if hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
        raise UserCacheError(f"{array_path}: sha256 mismatch (file corrupted or modified)")
    if model_sha256 is not None and meta.get("model_sha256") != model_sha256:
        raise UserCacheError(f"{meta_path}: built for model {str(meta.get('model_sha256'))[:12]}, "
                             f"serving model is {model_sha256[:12]}")
    if state is not None and meta.get("user_state") != user_state_fingerprint(state):
        raise UserCacheError(f"{meta_path}: built from other user histories (dataset changed); rebuild it")
    return np.load(io.BytesIO(raw), allow_pickle=False)
