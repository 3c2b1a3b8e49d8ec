"""Request context -> the model's context features (named fields, or derived from a timestamp).

A request's ``context`` is a JSON object. Each key is either a context feature of the model's schema
(``GET /v1/model`` lists them) or ``timestamp`` (unix seconds, UTC), from which every feature that
:func:`twotower.data.features.context_features` derives is computed; named fields override derived
ones. Values:

* numeric features: a JSON number (or ``true``/``false`` = 1/0), finite;
* categorical features: an integer index 1..cardinality-1, or a raw value of the feature's vocabulary
  (``vocab/<name>.parquet``, e.g. ``"Saturday"`` for ``day_of_week``).

Anything else raises :class:`~twotower.serve.schema.RequestError` naming ``context.<field>``.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from twotower.data.features import context_features
from twotower.data.vocab import read_vocab
from twotower.model.schema import DatasetSchema

from .schema import RequestError

TIMESTAMP = "timestamp"
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z


def context_vocabs(schema: DatasetSchema, dataset_dir: str | Path | None) -> dict[str, dict[str, int]]:
    """Vocabularies of the categorical context features found under ``dataset_dir`` (may be empty)."""
    if dataset_dir is None:
        return {}
    out = {}
    for f in schema.context_features:
        if f.kind == "categorical" and (vocab := read_vocab(dataset_dir, f.name)) is not None:
            out[f.name] = vocab
    return out


def _derived(timestamp: object, names: set[str]) -> dict[str, float | int]:
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) or not math.isfinite(timestamp):
        raise RequestError(f"context.{TIMESTAMP}", "must be a number (unix seconds, UTC)")
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise RequestError(f"context.{TIMESTAMP}", f"must be in 0..{MAX_TIMESTAMP} (unix seconds), got {timestamp}")
    cols = context_features(np.array([int(timestamp)], dtype=np.int64))
    return {name: col[0].item() for name, col in cols.items() if name in names}


def _value(feature, value: object, vocab: dict[str, int] | None) -> float | int:
    where = f"context.{feature.name}"
    if feature.kind == "numeric":
        if isinstance(value, bool):
            return float(value)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RequestError(where, f"must be a finite number, got {type(value).__name__} {value!r}")
        return float(value)
    if isinstance(value, str):
        if vocab is None or value not in vocab:
            known = sorted(vocab, key=vocab.get) if vocab else []
            raise RequestError(where, f"unknown value {value!r}" + (f"; known: {known}" if known else
                                                                     "; give an integer index"))
        return int(vocab[value])
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(where, f"must be an integer index or a string value, got {type(value).__name__} {value!r}")
    if not 1 <= value < feature.cardinality:
        raise RequestError(where, f"index must be in 1..{feature.cardinality - 1}, got {value}")
    return int(value)


def resolve_context(context: Mapping[str, object] | None, schema: DatasetSchema,
                    vocabs: Mapping[str, dict[str, int]] | None = None, now: float | None = None
                    ) -> dict[str, float | int]:
    """The value of every context feature of ``schema`` for one request.

    Args:
        context: the request's ``context`` object (None or {} = derive from ``now``).
        vocabs: categorical raw-value vocabularies (:func:`context_vocabs`).
        now: unix seconds used when no context is given (default: the current time).
    Returns:
        {feature name: float (numeric) or int (categorical index)} in schema order.
    Raises:
        RequestError: an unknown field, a value of the wrong type or out of range, or a feature that is
            neither given nor derivable from ``timestamp`` (the message names the field).
    """
    vocabs = vocabs or {}
    names = [f.name for f in schema.context_features]
    ctx = dict(context or {})
    if not ctx:
        ctx = {TIMESTAMP: int(time.time() if now is None else now)}
    for key in ctx:
        if key != TIMESTAMP and key not in names:
            raise RequestError(f"context.{key}", f"unknown context field; known: {names + [TIMESTAMP]}")
    out: dict[str, float | int] = _derived(ctx[TIMESTAMP], set(names)) if TIMESTAMP in ctx else {}
    for f in schema.context_features:
        if f.name in ctx:
            out[f.name] = _value(f, ctx[f.name], vocabs.get(f.name))
        elif f.name not in out:
            raise RequestError(f"context.{f.name}", "missing: give every context field or a timestamp")
        else:
            out[f.name] = float(out[f.name]) if f.kind == "numeric" else int(out[f.name])
    return {name: out[name] for name in names}


def context_batch(contexts: list[Mapping[str, float | int]], schema: DatasetSchema) -> dict[str, np.ndarray]:
    """Stack resolved contexts into model columns: numeric float32 (B,), categorical int64 (B,)."""
    out = {}
    for f in schema.context_features:
        dtype = np.float32 if f.kind == "numeric" else np.int64
        out[f.name] = np.array([c[f.name] for c in contexts], dtype=dtype)
    return out
