"""The FastAPI app of one Ingress replica (:func:`build_api`): the routes, their request models generated
from the loaded model (:mod:`twotower.serve.contract`), every response they give, and examples.

    POST /v1/recommend       200 RecommendResponse, 422 / 503 ErrorBody
    POST /v1/similar-items   200 SimilarItemsResponse, 404 / 422 / 503 ErrorBody
    GET  /v1/model           200 ModelInfo
    GET  /healthz            200 / 503 Health
    GET  /v1/users[/{id}]    200 sample user ids / a user's recent items; GET /demo the demo page (:mod:`.demo`)

A 503 carries ``Retry-After``. A 500 is a bug and is not part of the contract (:mod:`twotower.serve.http`).
"""
# no ``from __future__ import annotations``: FastAPI reads the generated body types from the signatures
from typing import Annotated

from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse

from . import recommender
from .contract import recommend_examples, request_models, similar_examples
from .http import create_api
from .recommender import ServingState
from .context import derived_features
from .demo import add_demo_routes
from .metrics import note_path
from .schema import (ErrorBody, FeatureField, Health, IndexSummary, ModelInfo, RecommendResponse, ShardHealth,
                     ShardStatus, SimilarItemsResponse)
from .user_state import MAX_ENUM

_ERRORS = {
    404: ("Unknown `item_id`.", {"error": "not_found", "message": "item_id: unknown item 'no-such-item'",
                                 "fields": ["item_id"]}),
    422: ("A request this model cannot take; `message` and `fields` name the field(s).",
          {"error": "invalid_request", "message": "context.day_of_week: index must be in 1..7, got 9",
           "fields": ["context.day_of_week"]}),
    503: ("The index shards or the query encoder cannot answer now; retry after `Retry-After` seconds.",
          {"error": "unavailable", "message": "Searcher1 (shard 1): no answer within 10.0 s; retry after 2 s",
           "fields": [], "unavailable": ["Searcher1"], "retry_after_s": 2}),
}
_RETRY_AFTER = {"Retry-After": {"description": "whole seconds after which a retry is likely to succeed",
                                "schema": {"type": "integer", "minimum": 1}}}


def error_responses(*codes: int) -> dict:
    """FastAPI ``responses`` entries: ErrorBody for each of ``codes``, with a description and an example."""
    out = {}
    for code in codes:
        description, example = _ERRORS[code]
        out[code] = {"model": ErrorBody, "description": description,
                     "content": {"application/json": {"example": example}}}
        if code == 503:
            out[code]["headers"] = _RETRY_AFTER
    return out


def feature_field(f, vocab: dict[str, int] | None, max_values: int | None = None) -> FeatureField:
    """A feature as ``GET /v1/model`` describes it; ``values``: the vocabulary of a categorical / multi_hot
    feature (None without one, or when it has more than ``max_values``)."""
    listed = vocab is not None and f.kind in ("categorical", "multi_hot") and (
        max_values is None or len(vocab) <= max_values)
    return FeatureField(name=f.name, kind=f.kind, cardinality=f.cardinality, max_length=f.max_length, dim=f.dim,
                        values=sorted(vocab, key=vocab.get) if listed else None, source=f.source,
                        boundaries=list(f.boundaries) if f.kind == "bucketized" else None)


def model_info(state: ServingState, statuses: list[dict]) -> ModelInfo:
    """``GET /v1/model``: the model's version, context mode, context fields and user features (kinds and
    accepted values), and the index the shards report."""
    index = next((st["index"] for st in statuses if st.get("index")), None) or {}
    schema, user_vocabs = state.schema, state.users.feature_vocabs
    fields = [feature_field(f, state.context_vocabs.get(f.name)) for f in schema.context_features]
    users = [feature_field(f, user_vocabs.get(f.name), MAX_ENUM) for f in schema.user_features]
    shards = [ShardStatus(**{k: v for k, v in st.items() if k in ShardStatus.model_fields}) for st in statuses]
    return ModelInfo(model_version=state.model_version, context_mode=state.mode.value, context_schema=fields,
                     accepts_timestamp=bool(derived_features(schema)), user_features=[f.name for f in users],
                     user_feature_schema=users, num_users=schema.num_users, num_items=schema.num_items,
                     history_length=state.users.history_length,
                     index=IndexSummary(**{**index, "num_shards": len(statuses), "shards": shards}))


def health(state: ServingState, statuses: list[dict]) -> Health:
    """``GET /healthz``: ``ready`` when every shard has an index loaded."""
    ready = all(st.get("loaded") for st in statuses)
    return Health(status="ready" if ready else "not_ready", model_version=state.model_version,
                  index_versions=sorted({st.get("version") for st in statuses if st.get("version")}),
                  shards=[ShardHealth(**{k: st.get(k) for k in ShardHealth.model_fields}) for st in statuses])


def _example_statuses(num_shards: int) -> list[dict]:
    return [{"shard": s, "loaded": True, "version": "INDEX_VERSION", "loaded_versions": ["INDEX_VERSION"],
             "last_error": None} for s in range(num_shards)]


def _example(value: object) -> dict:
    return {"content": {"application/json": {"example": value}}}


def build_api(state: ServingState, backend, num_shards: int) -> FastAPI:
    """The app answering for ``state``'s model through ``backend`` (a
    :class:`~twotower.serve.recommender.Backend` that also has ``statuses()``) over ``num_shards`` shards."""
    api = create_api()
    recommend_model, similar_model = request_models(state)
    recommend_body = Annotated[recommend_model, Body(openapi_examples=recommend_examples(state))]
    similar_body = Annotated[similar_model, Body(openapi_examples=similar_examples(state))]
    ready = health(state, _example_statuses(num_shards)).model_dump()
    not_ready = {**ready, "status": "not_ready", "index_versions": [],
                 "shards": [{**s, "loaded": False, "version": None} for s in ready["shards"]]}

    @api.post("/v1/recommend", response_model=RecommendResponse, responses=error_responses(422, 503))
    async def recommend(body: recommend_body) -> RecommendResponse:
        """Top-k items for a user in a context (model path, or cold start for unknown users)."""
        response = await recommender.recommend(body, state, backend)
        note_path(response.path)                     # the request's ``path`` label (twotower.serve.metrics)
        return response

    @api.post("/v1/similar-items", response_model=SimilarItemsResponse, responses=error_responses(404, 422, 503))
    async def similar(body: similar_body) -> SimilarItemsResponse:
        """Nearest items to an item in the item embedding space."""
        return await recommender.similar_items(body, state, backend)

    @api.get("/v1/model", response_model=ModelInfo,
             responses={200: _example(model_info(state, _example_statuses(num_shards)).model_dump())})
    async def model() -> ModelInfo:
        """Model version, context mode and schema, and the index manifest summary."""
        return model_info(state, await backend.statuses())

    @api.get("/healthz", response_model=Health, responses={
        200: _example(ready), 503: {"model": Health, "description": "Not every shard has an index loaded.",
                                    **_example(not_ready)}})
    async def healthz():
        """200 ``ready`` when every shard has an index loaded (and agrees on its version), else 503."""
        body = health(state, await backend.statuses())
        return JSONResponse(status_code=200 if body.status == "ready" else 503, content=body.model_dump())

    add_demo_routes(api, state)
    return api
