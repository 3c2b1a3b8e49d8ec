"""Request values of features by kind: the checks (and the JSON Schema written beside each) that context
fields (:mod:`twotower.serve.context`) and cold-start user features (:mod:`twotower.serve.user_state`) share.

A request value becomes the model value the batch takes (:func:`twotower.model.batch.feature_column`):

* ``numeric`` / ``bucketized``: a JSON number in -:data:`NUMERIC_LIMIT`..:data:`NUMERIC_LIMIT` (``true`` /
  ``false`` = 1 / 0) -> float, the RAW value (the model standardises / bucketizes it, as it does the
  stored raw values); the towers compute in float32, where larger inputs overflow to inf/NaN scores;
* ``multi_hot``: a JSON array of at most ``max(max_length, 1)`` entries (the model reads no more), each
  checked like one categorical value (the caller's rule) -> sorted distinct indices, 0 (unknown) dropped;
* ``hashed_bag``: a text of at most :data:`MAX_TEXT_LENGTH` characters -> its hash buckets,
  :func:`twotower.data.features.hash_tokens` (the tokeniser prepare uses) with the feature's cardinality
  and max_length;
* ``vector``: a JSON array of exactly ``dim`` numbers within the limit -> list of float.

Every check raises :class:`~twotower.serve.schema.RequestError` naming ``where`` (the field's dotted path).
"""
from __future__ import annotations

import math
from collections.abc import Callable

from twotower.data.features import hash_tokens
from twotower.model.schema import Feature

from .schema import RequestError

NUMERIC_LIMIT = 1e6
MAX_TEXT_LENGTH = 10_000
NUMBER_SCHEMA = {"type": "number", "minimum": -NUMERIC_LIMIT, "maximum": NUMERIC_LIMIT}


def number(value: object, where: str) -> float:
    """A finite number within +-NUMERIC_LIMIT (booleans as 1.0 / 0.0) as float."""
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(where, f"must be a finite number, got {type(value).__name__} {value!r}")
    if not -NUMERIC_LIMIT <= value <= NUMERIC_LIMIT:
        raise RequestError(where, f"must be in {-NUMERIC_LIMIT:g}..{NUMERIC_LIMIT:g}, got {value!r}")
    return float(value)


def number_schema(feature: Feature) -> dict:
    """JSON Schema of :func:`number`."""
    what = "raw value, standardised by the model" if feature.kind == "numeric" else \
        f"raw value, bucketized by the model at {list(feature.boundaries)}"
    return {"anyOf": [NUMBER_SCHEMA, {"type": "boolean"}], "description": f"{feature.kind}: {what}; true/false = 1/0"}


def vector(feature: Feature, value: object, where: str) -> list[float]:
    """A list of exactly ``feature.dim`` numbers (not booleans) within +-NUMERIC_LIMIT."""
    if not isinstance(value, list) or len(value) != feature.dim:
        got = f"{len(value)} values" if isinstance(value, list) else type(value).__name__
        raise RequestError(where, f"must be a list of exactly {feature.dim} numbers (the vector's dim), got {got}")
    out = []
    for i, x in enumerate(value):
        if isinstance(x, bool):
            raise RequestError(where, f"entry {i} must be a number, got bool")
        out.append(number(x, where))
    return out


def vector_schema(feature: Feature) -> dict:
    """JSON Schema of :func:`vector`."""
    return {"type": "array", "items": NUMBER_SCHEMA, "minItems": feature.dim, "maxItems": feature.dim,
            "description": f"vector: exactly {feature.dim} numbers"}


def text(feature: Feature, value: object, where: str) -> list[int]:
    """The hash buckets (``hash_tokens``) of a text of at most MAX_TEXT_LENGTH characters."""
    if not isinstance(value, str):
        raise RequestError(where, f"must be a text (string), got {type(value).__name__}")
    if len(value) > MAX_TEXT_LENGTH:
        raise RequestError(where, f"must be at most {MAX_TEXT_LENGTH} characters, got {len(value)}")
    return hash_tokens(value, feature.cardinality, max(feature.max_length, 1))


def text_schema(feature: Feature) -> dict:
    """JSON Schema of :func:`text`."""
    return {"type": "string", "maxLength": MAX_TEXT_LENGTH,
            "description": "hashed_bag: a text, tokenised and hashed as prepare does"}


def index_list(feature: Feature, value: object, where: str, element: Callable[[object], int]) -> list[int]:
    """Sorted distinct non-zero ``element(entry)`` of a list of at most ``max(max_length, 1)`` entries;
    ``element`` checks one entry (raising RequestError) and returns its index (0 = unknown, dropped)."""
    limit = max(feature.max_length, 1)
    if not isinstance(value, list):
        raise RequestError(where, f"must be a list of values, got {type(value).__name__}")
    if len(value) > limit:
        raise RequestError(where, f"must have at most {limit} entries, got {len(value)}")
    return sorted({i for i in (element(x) for x in value) if i > 0})


def list_schema(feature: Feature, element_schema: dict) -> dict:
    """JSON Schema of :func:`index_list` with ``element_schema`` for each entry."""
    return {"type": "array", "items": element_schema, "maxItems": max(feature.max_length, 1),
            "description": f"{feature.kind}: a list of values; duplicates count once"}


def missing(feature: Feature) -> object:
    """The model value of a feature a request does not give: NaN (numeric, bucketized: missing, encoded
    as 0), 0 (categorical: unknown), [] (lists), zeros (vector)."""
    if feature.kind in ("numeric", "bucketized"):
        return math.nan
    if feature.kind == "categorical":
        return 0
    return [0.0] * feature.dim if feature.kind == "vector" else []


def informative(feature: Feature, value: object) -> bool:
    """Whether a model value tells the model anything (a known index, a number, a non-empty list, a
    non-zero vector): what makes a cold-start request take the user tower rather than popularity."""
    if feature.kind == "categorical":
        return int(value) > 0
    if feature.kind in ("numeric", "bucketized"):
        return not math.isnan(value)
    return any(value)


def by_kind(feature: Feature, value: object, where: str, index: Callable[[object], int]) -> object:
    """The model value of a raw request ``value`` of ``feature``, dispatched on its kind: numeric /
    bucketized :func:`number`; multi_hot :func:`index_list` of ``index``; hashed_bag :func:`text`; vector
    :func:`vector`; categorical ``index(value)``. Raises RequestError naming ``where``."""
    if feature.kind in ("numeric", "bucketized"):
        return number(value, where)
    if feature.kind == "multi_hot":
        return index_list(feature, value, where, index)
    if feature.kind == "hashed_bag":
        return text(feature, value, where)
    if feature.kind == "vector":
        return vector(feature, value, where)
    return index(value)


def schema_by_kind(feature: Feature, index_schema: dict) -> dict:
    """JSON Schema of the values :func:`by_kind` accepts for ``feature``; ``index_schema``: that of one
    categorical value (the whole value for categorical, each element for multi_hot)."""
    if feature.kind in ("numeric", "bucketized"):
        return number_schema(feature)
    if feature.kind == "multi_hot":
        return list_schema(feature, index_schema)
    if feature.kind == "hashed_bag":
        return text_schema(feature)
    if feature.kind == "vector":
        return vector_schema(feature)
    return index_schema
