"""Request context -> the model's context features (named fields, or derived from a timestamp).

A request's ``context`` is a JSON object. Each key is either a context feature of the model's schema
(``GET /v1/model`` lists them) or ``timestamp`` (unix seconds, UTC), from which every feature that
:func:`twotower.data.features.context_features` derives is computed; named fields override derived
ones. Values:

* ``timestamp``: a JSON number in 0..:data:`MAX_TIMESTAMP`;
* numeric features: a JSON number in -:data:`NUMERIC_LIMIT`..:data:`NUMERIC_LIMIT` (or ``true``/``false``
  = 1/0): the towers compute in float32, where larger inputs overflow to inf/NaN scores;
* categorical features: an integer index 1..cardinality-1, or a raw value of the feature's vocabulary
  (``vocab/<name>.parquet``, e.g. ``"Saturday"`` for ``day_of_week``);
* a non-empty context either has ``timestamp`` or names every feature.

Anything else raises :class:`~twotower.serve.schema.RequestError` naming ``context.<field>``. The same
rules as JSON Schema (:func:`value_json_schema`, :func:`context_json_schema`) sit next to each check:
the HTTP request model (:mod:`twotower.serve.contract`) validates with the checks and publishes these.
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

from .schema import RequestError, json_int

TIMESTAMP = "timestamp"
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z
NUMERIC_LIMIT = 1e6
TIMESTAMP_SCHEMA = {"type": "number", "minimum": 0, "maximum": MAX_TIMESTAMP,
                    "description": "unix seconds, UTC; every context field is derived from it"}


def context_vocabs(schema: DatasetSchema, dataset_dir: str | Path | None) -> dict[str, dict[str, int]]:
    """Vocabularies of the categorical context features found under ``dataset_dir`` (may be empty)."""
    if dataset_dir is None:
        return {}
    out = {}
    for f in schema.context_features:
        if f.kind == "categorical" and (vocab := read_vocab(dataset_dir, f.name)) is not None:
            out[f.name] = vocab
    return out


def check_timestamp(timestamp: object) -> float | int:
    """``timestamp`` when it is a number in 0..MAX_TIMESTAMP; RequestError (``context.timestamp``) else."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) or not math.isfinite(timestamp):
        raise RequestError(f"context.{TIMESTAMP}", "must be a number (unix seconds, UTC)")
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise RequestError(f"context.{TIMESTAMP}", f"must be in 0..{MAX_TIMESTAMP} (unix seconds), got {timestamp}")
    return timestamp


def _derived(timestamp: object, names: set[str]) -> dict[str, float | int]:
    cols = context_features(np.array([int(check_timestamp(timestamp))], dtype=np.int64))
    return {name: col[0].item() for name, col in cols.items() if name in names}


def check_value(feature, value: object, vocab: dict[str, int] | None) -> float | int:
    """The model value of ``value`` for context ``feature``: float (numeric) or int index (categorical).

    Raises:
        RequestError: a value :func:`value_json_schema` does not allow (names ``context.<feature>``).
    """
    where = f"context.{feature.name}"
    if feature.kind == "numeric":
        if isinstance(value, bool):
            return float(value)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RequestError(where, f"must be a finite number, got {type(value).__name__} {value!r}")
        if not -NUMERIC_LIMIT <= value <= NUMERIC_LIMIT:
            raise RequestError(where, f"must be in {-NUMERIC_LIMIT:g}..{NUMERIC_LIMIT:g}, got {value!r}")
        return float(value)
    if isinstance(value, str):
        if vocab is None or value not in vocab:
            known = sorted(vocab, key=vocab.get) if vocab else []
            raise RequestError(where, f"unknown value {value!r}" + (f"; known: {known}" if known else
                                                                     "; give an integer index"))
        return int(vocab[value])
    try:
        index = json_int(value)
    except ValueError:
        raise RequestError(where, f"must be an integer index or a string value, got {type(value).__name__} "
                                  f"{value!r}") from None
    if not 1 <= index < feature.cardinality:
        raise RequestError(where, f"index must be in 1..{feature.cardinality - 1}, got {value}")
    return index


def value_json_schema(feature, vocab: dict[str, int] | None) -> dict:
    """JSON Schema of the values :func:`check_value` accepts for ``feature`` (every vocabulary value is
    listed: a string outside it is refused)."""
    if feature.kind == "numeric":
        return {"anyOf": [{"type": "number", "minimum": -NUMERIC_LIMIT, "maximum": NUMERIC_LIMIT},
                          {"type": "boolean"}], "description": "numeric; true/false = 1/0"}
    index = {"type": "integer", "minimum": 1, "maximum": feature.cardinality - 1}
    if not vocab:
        return {**index, "description": "categorical: an integer index"}
    return {"anyOf": [index, {"type": "string", "enum": sorted(vocab, key=vocab.get)}],
            "description": "categorical: an integer index or a value"}


def context_json_schema(schema: DatasetSchema) -> dict:
    """The object-level rule of :func:`resolve_context` as JSON Schema: a non-empty context has
    ``timestamp`` or every feature (the keys and values are the request model's properties)."""
    names = [f.name for f in schema.context_features]
    return {"anyOf": [{"maxProperties": 0}, {"required": [TIMESTAMP]}, {"required": names}]}


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
            out[f.name] = check_value(f, ctx[f.name], vocabs.get(f.name))
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
