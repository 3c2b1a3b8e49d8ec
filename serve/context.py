"""Request context -> the model's context features (named fields, or derived from a timestamp).

A request's ``context`` is a JSON object. Each key is a context feature of the model's schema
(``GET /v1/model`` lists them) or, when the schema has features derived from the timestamp
(``source == "timestamp"``: ``hour_sin``, ``hour_cos``, ``day_of_week``, ``is_weekend``), ``timestamp``
(unix seconds, UTC), from which those derived features are computed
(:func:`twotower.data.features.context_features`); named fields override derived ones. A schema without
derived features accepts no ``timestamp``, and no feature is ever derived for a stored one. Values:

* ``timestamp``: a JSON number in 0..:data:`MAX_TIMESTAMP`;
* numeric / bucketized features: the RAW value, a JSON number within +-:data:`~twotower.serve.values.NUMERIC_LIMIT`
  (or ``true``/``false`` = 1/0); the model standardises / bucketizes it (:mod:`twotower.serve.values`);
* categorical features: an integer index 1..cardinality-1, or a raw value of the feature's vocabulary
  (``vocab/<name>.parquet``, e.g. ``"Saturday"`` for ``day_of_week``); an unknown value is refused;
* multi_hot features: a JSON list of at most max_length such values (indices or vocabulary values, mixed
  as one likes; an unknown value is refused, as for categorical ones; duplicates count once) -> the
  sorted distinct indices;
* which fields: every STORED context feature must be given; each derived one is given or comes from
  ``timestamp``. An empty (or omitted) context is the server's current time, so it is only complete for
  a schema without stored context features.

Anything else raises :class:`~twotower.serve.schema.RequestError` naming ``context.<field>``. The same
rules as JSON Schema (:func:`value_json_schema`, :func:`context_json_schema`) sit next to each check:
the HTTP request model (:mod:`twotower.serve.contract`) validates with the checks and publishes these.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np

from twotower.data.features import context_features
from twotower.data.vocab import read_vocab
from twotower.model.batch import feature_column
from twotower.model.schema import DatasetSchema, Feature

from . import values
from .schema import RequestError, json_int

TIMESTAMP = "timestamp"
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z
TIMESTAMP_SCHEMA = {"type": "number", "minimum": 0, "maximum": MAX_TIMESTAMP,
                    "description": "unix seconds, UTC; the context fields derived from the time come from it"}
ContextValue = float | int | list


def context_vocabs(schema: DatasetSchema, dataset_dir: str | Path | None) -> dict[str, dict[str, int]]:
    """Vocabularies of the categorical and multi_hot context features found under ``dataset_dir`` (may be
    empty)."""
    if dataset_dir is None:
        return {}
    out = {}
    for f in schema.context_features:
        if f.kind in ("categorical", "multi_hot") and (vocab := read_vocab(dataset_dir, f.name)) is not None:
            out[f.name] = vocab
    return out


def check_timestamp(timestamp: object) -> float | int:
    """``timestamp`` when it is a number in 0..MAX_TIMESTAMP; RequestError (``context.timestamp``) else."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) or not math.isfinite(timestamp):
        raise RequestError(f"context.{TIMESTAMP}", "must be a number (unix seconds, UTC)")
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise RequestError(f"context.{TIMESTAMP}", f"must be in 0..{MAX_TIMESTAMP} (unix seconds), got {timestamp}")
    return timestamp


def derived_features(schema: DatasetSchema) -> list[Feature]:
    """The context features derived from the timestamp (``source == "timestamp"``)."""
    return [f for f in schema.context_features if not f.stored]


def _derived(timestamp: object, features: list[Feature]) -> dict[str, float | int]:
    cols = context_features(np.array([int(check_timestamp(timestamp))], dtype=np.int64))
    return {f.name: cols[f.name][0].item() for f in features if f.name in cols}


def _index(feature: Feature, value: object, vocab: dict[str, int] | None, where: str) -> int:
    """One categorical value: an index 1..cardinality-1 or a vocabulary value (unknown refused)."""
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


def check_value(feature: Feature, value: object, vocab: dict[str, int] | None) -> ContextValue:
    """The model value of ``value`` for context ``feature`` (module docstring): float (numeric,
    bucketized: raw), int index (categorical), sorted distinct indices (multi_hot), hash buckets
    (hashed_bag), floats (vector).

    Raises:
        RequestError: a value :func:`value_json_schema` does not allow (names ``context.<feature>``).
    """
    where = f"context.{feature.name}"
    return values.by_kind(feature, value, where, partial(_index, feature, vocab=vocab, where=where))


def _index_schema(feature: Feature, vocab: dict[str, int] | None) -> dict:
    index = {"type": "integer", "minimum": 1, "maximum": feature.cardinality - 1}
    if not vocab:
        return {**index, "description": "categorical: an integer index"}
    return {"anyOf": [index, {"type": "string", "enum": sorted(vocab, key=vocab.get)}],
            "description": "categorical: an integer index or a value"}


def value_json_schema(feature: Feature, vocab: dict[str, int] | None) -> dict:
    """JSON Schema of the values :func:`check_value` accepts for ``feature`` (every vocabulary value is
    listed: a string outside it is refused)."""
    return values.schema_by_kind(feature, _index_schema(feature, vocab))


def context_json_schema(schema: DatasetSchema) -> dict:
    """The object-level rule of :func:`resolve_context` as JSON Schema: every stored feature is required;
    the derived ones are all given or ``timestamp`` is; an empty object only without stored features (the
    keys and values are the request model's properties)."""
    stored, derived = [f.name for f in schema.stored_context], [f.name for f in derived_features(schema)]
    timed = [{"required": [TIMESTAMP]}, {"required": derived}] if derived else []
    if not stored:
        return {"anyOf": [{"maxProperties": 0}, *timed]} if timed else {}
    return {"required": stored, **({"anyOf": timed} if timed else {})}


def resolve_context(context: Mapping[str, object] | None, schema: DatasetSchema,
                    vocabs: Mapping[str, dict[str, int]] | None = None, now: float | None = None
                    ) -> dict[str, ContextValue]:
    """The value of every context feature of ``schema`` for one request (see the module docstring).

    Args:
        context: the request's ``context`` object (None or {} = the current time ``now``).
        vocabs: categorical / multi_hot raw-value vocabularies (:func:`context_vocabs`).
        now: unix seconds used for an empty context (default: the current time).
    Returns:
        {feature name: model value (:func:`check_value`)} in schema order.
    Raises:
        RequestError: an unknown field, a value of the wrong type or out of range, a stored feature not
            given, or a derived one neither given nor derivable from ``timestamp`` (names the field).
    """
    vocabs, derived = vocabs or {}, derived_features(schema)
    known = [f.name for f in schema.context_features] + ([TIMESTAMP] if derived else [])
    ctx = dict(context or {})
    if not ctx and derived and not schema.stored_context:
        ctx = {TIMESTAMP: int(time.time() if now is None else now)}
    for key in ctx:
        if key not in known:
            raise RequestError(f"context.{key}", f"unknown context field; known: {known}")
    out: dict[str, ContextValue] = _derived(ctx[TIMESTAMP], derived) if TIMESTAMP in ctx else {}
    for f in schema.context_features:
        if f.name in ctx:
            out[f.name] = check_value(f, ctx[f.name], vocabs.get(f.name))
        elif f.stored:
            raise RequestError(f"context.{f.name}", "missing: every stored context field must be given")
        elif f.name not in out:
            raise RequestError(f"context.{f.name}", "missing: give every context field or a timestamp")
        else:
            out[f.name] = float(out[f.name]) if f.kind in ("numeric", "bucketized") else int(out[f.name])
    return {f.name: out[f.name] for f in schema.context_features}


def context_batch(contexts: list[Mapping[str, ContextValue]], schema: DatasetSchema) -> dict[str, np.ndarray]:
    """Stack resolved contexts into model columns (:func:`twotower.model.batch.feature_column`): numeric /
    bucketized float32 (B,), categorical int64 (B,), multi_hot int64 (B, L)."""
    return {f.name: feature_column(f, [c[f.name] for c in contexts]) for f in schema.context_features}
