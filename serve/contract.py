"""The HTTP contract of one loaded model: request models generated from its schema, and examples.

:func:`request_models` subclasses :class:`~twotower.serve.schema.RecommendRequest` and
:class:`~twotower.serve.schema.SimilarItemsRequest` for a :class:`~twotower.serve.recommender.ServingState`:
``context`` and ``user_features`` become closed objects (``additionalProperties: false``) with one
property per key the server accepts. Each property is validated by the serving check itself
(:func:`twotower.serve.context.check_value`, :func:`~twotower.serve.context.check_timestamp`,
:func:`twotower.serve.user_state.user_feature_value`) and published with the JSON Schema written next to
that check (every feature kind: numbers within +-1e6, lists with ``maxItems``, vectors with
``minItems`` = ``maxItems`` = dim, texts with ``maxLength``). ``context`` is required when the model has
stored context features (an omitted context is the current time, which only gives derived ones). FastAPI validates request bodies with these models and derives ``/openapi.json`` from them,
so the document and the validation have one source; a violation is FastAPI's 422 naming the field
(``context.day_of_week``, ``user_features.shoe_size``).
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated, Optional

from pydantic import ConfigDict, Field, PlainValidator, WithJsonSchema, create_model, with_config
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from .context import (TIMESTAMP, TIMESTAMP_SCHEMA, check_timestamp, check_value, context_json_schema, derived_features,
                      resolve_context, value_json_schema)
from .recommender import ServingState
from .schema import RecommendRequest, RequestError, SimilarItemsRequest
from .user_state import requestable, user_feature_json_schema, user_feature_value

EXAMPLE_TIMESTAMP = 880_000_000                     # 1997-11-20T04:26:40Z, inside MovieLens-100K's range


def _checked(check: Callable[[object], object], json_schema: dict) -> type:
    """A value type validated by ``check`` (a RequestError becomes a pydantic error at the key's location,
    with the check's message) and published as ``json_schema``; the raw value is kept."""
    def validate(value: object) -> object:
        try:
            check(value)
        except RequestError as e:
            raise PydanticCustomError("invalid_value", "{message}", {"message": e.message}) from None
        return value
    return Annotated[object, PlainValidator(validate), WithJsonSchema(json_schema)]


def _closed(name: str, fields: dict[str, type], description: str, rule: dict | None = None) -> type:
    """A TypedDict of optional keys, unknown keys refused (``extra_forbidden``), ``rule`` (JSON Schema
    keywords on the whole object) added to its published schema."""
    td = TypedDict(name, fields, total=False)
    td.__doc__ = description
    return with_config(ConfigDict(extra="forbid", json_schema_extra=rule))(td)


def context_model(state: ServingState) -> type:
    """The ``context`` object of this model: its context features and, when some are derived from the
    time, ``timestamp``."""
    fields = {f.name: _checked(partial(check_value, f, vocab=state.context_vocabs.get(f.name)),
                               value_json_schema(f, state.context_vocabs.get(f.name)))
              for f in state.schema.context_features}
    if derived_features(state.schema):
        fields[TIMESTAMP] = _checked(check_timestamp, TIMESTAMP_SCHEMA)
    return _closed("RecommendContext", fields, "Context fields of the model: every stored one, and the ones derived "
                   "from the time named or derived from `timestamp` (named fields override derived ones). Empty "
                   "or omitted (only without stored fields): the server's current time.",
                   context_json_schema(state.schema))


def user_features_model(state: ServingState) -> type:
    """The ``user_features`` object of this model: every user feature, by kind."""
    vocabs = state.users.feature_vocabs
    fields = {f.name: _checked(partial(user_feature_value, f, vocab=vocabs.get(f.name)),
                               user_feature_json_schema(f, vocabs.get(f.name)))
              for f in requestable(state.schema)}
    return _closed("UserFeatures", fields, "Raw user feature values, used for unknown users only (cold start).")


def request_models(state: ServingState) -> tuple[type[RecommendRequest], type[SimilarItemsRequest]]:
    """(RecommendRequest, SimilarItemsRequest) subclasses for ``state``'s model (see the module docstring)."""
    context = (context_model(state), ...) if state.schema.stored_context else \
        (Optional[context_model(state)], Field(None))
    recommend = create_model(
        "RecommendRequest", __base__=RecommendRequest, __doc__=RecommendRequest.__doc__, context=context,
        user_features=(Optional[user_features_model(state)], Field(None)))
    similar = create_model("SimilarItemsRequest", __base__=SimilarItemsRequest, __doc__=SimilarItemsRequest.__doc__)
    return recommend, similar


def _first(vocab: dict[str, int] | None) -> object:
    return min(vocab, key=vocab.get) if vocab else 1


def example_value(f, vocab: dict[str, int] | None) -> object:
    """A valid request value of feature ``f`` (its first vocabulary value, mean, first boundary, ...)."""
    if f.kind == "numeric":
        return round(f.mean, 4)
    if f.kind == "bucketized":
        return f.boundaries[0]
    if f.kind == "multi_hot":
        return [_first(vocab)]
    if f.kind == "hashed_bag":
        return "an example text"
    return [0.0] * f.dim if f.kind == "vector" else _first(vocab)


def _stored_context(state: ServingState) -> dict[str, object]:
    return {f.name: example_value(f, state.context_vocabs.get(f.name)) for f in state.schema.stored_context}


def _timed_context(state: ServingState) -> dict[str, object]:
    """EXAMPLE_TIMESTAMP (when the model derives fields from it) and every stored context field."""
    return ({TIMESTAMP: EXAMPLE_TIMESTAMP} if derived_features(state.schema) else {}) | _stored_context(state)


def _named_context(state: ServingState) -> dict[str, object]:
    """Every context field: derived ones as derived from EXAMPLE_TIMESTAMP, categorical ones by their raw
    value; stored ones by :func:`example_value`."""
    resolved = resolve_context(_timed_context(state), state.schema, state.context_vocabs)
    names = {name: {i: v for v, i in vocab.items()} for name, vocab in state.context_vocabs.items()}
    derived = {f.name for f in derived_features(state.schema)}
    return {k: names[k].get(v, v) if k in names else round(v, 4) if isinstance(v, float) else v
            for k, v in resolved.items() if k in derived} | _stored_context(state)


def recommend_examples(state: ServingState) -> dict[str, dict]:
    """``openapi_examples`` of ``POST /v1/recommend``: a known user (timestamp, named fields) and the
    two cold-start paths."""
    user = min(state.users.user_vocab, key=state.users.user_vocab.get) if state.users.user_vocab else "1"
    top = [str(state.catalogue.item_ids[i]) for i in state.catalogue.popular[:1]]
    vocabs = state.users.feature_vocabs
    features = {f.name: example_value(f, vocabs.get(f.name)) for f in requestable(state.schema)}
    timed = _timed_context(state)
    examples = {
        "known_user": {"summary": "a known user at a time", "value": {"user_id": user, "context": timed, "k": 10}},
        "named_context": {"summary": "every context field named, seen items kept, one item left out", "value": {
            "user_id": user, "context": _named_context(state), "k": 5, "exclude_seen": False, "exclude_items": top}},
        "cold_start_features": {"summary": "an unknown user with features (user tower)", "value": {
            "user_id": "new-user", "context": timed, "user_features": features}},
        "cold_start_popularity": {"summary": "an unknown user, nothing known (popularity)", "value": {
            "user_id": "new-user", "k": 5, **({"context": timed} if state.schema.stored_context else {})}},
    }
    if not features:
        del examples["cold_start_features"]
    return examples


def similar_examples(state: ServingState) -> dict[str, dict]:
    """``openapi_examples`` of ``POST /v1/similar-items``: the most popular item."""
    cat = state.catalogue
    item = str(cat.item_ids[cat.popular[0]]) if len(cat.popular) else "1"
    return {"popular_item": {"summary": "the items nearest to an item", "value": {"item_id": item, "k": 10}}}
