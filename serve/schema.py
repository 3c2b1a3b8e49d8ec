"""HTTP request/response models of the serving API (pydantic 2) and the error type naming a field.

Every request model forbids unknown top-level fields, so a misspelt field is a 422 naming it. Scalars
are strict where a silent conversion would hide a client bug (``k: "10"`` or ``k: true`` is rejected).
Context values are checked against the model's schema later (:mod:`twotower.serve.context`), since the
set of context fields is only known once a checkpoint is loaded.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictBool, StrictInt, WithJsonSchema

MAX_K = 1000
RecommendPath = Literal["model", "cold_start"]     # which path answered: RecommendResponse.path


def _scalar(value: object) -> object:
    if isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"must be a number, boolean or string, got {type(value).__name__}")


def _raw_id(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip():
        raise ValueError("must be a non-empty string or an integer")
    return str(value).strip()


# one validator (one error, located at the field) instead of a union's error per member type
ContextValue = Annotated[Union[bool, int, float, str], PlainValidator(_scalar),
                         WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}]})]
RawId = Annotated[str, PlainValidator(_raw_id), WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}]})]


class RequestError(ValueError):
    """A request that is well-formed JSON but wrong for this model: ``field`` names the offending field
    as a dotted path (``context.hour_sin``, ``user_features.gender``); ``status`` is the HTTP status
    (422 invalid value, 404 unknown item)."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


class Unavailable(RuntimeError):
    """A backend (query encoder, shard searchers) cannot answer right now: HTTP 503 with a ``Retry-After``
    header of ``retry_after_s`` seconds (a replica restarting, a call past its timeout).

    Attributes:
        deployments: the Serve deployments that did not answer (``Searcher1``, ``QueryEncoder``).
        retry_after_s: seconds after which a retry is likely to succeed (whole seconds, >= 1).
    """

    def __init__(self, message: str, deployments: list[str] | None = None, retry_after_s: int = 1):
        super().__init__(message)
        self.deployments, self.retry_after_s = list(deployments or []), max(1, int(retry_after_s))


class RecommendRequest(BaseModel):
    """``POST /v1/recommend``.

    Attributes:
        user_id: raw user id as in the dataset (string or integer); unknown ids take the cold-start path.
        context: named context fields of the model's schema (``GET /v1/model`` lists them) and/or
            ``timestamp`` (unix seconds, UTC) from which every field is derived; named fields override
            derived ones. Omitted: derived from the server's current time.
        k: number of items to return, 1..1000.
        exclude_seen: leave out every item the user interacted with (all splits of the dataset).
        exclude_items: raw item ids to leave out as well (unknown ids are ignored).
        user_features: raw user feature values (``{"gender": "F", "age_bucket": "25"}``) used only for
            unknown users (cold start); values not in the feature's vocabulary count as unknown.
    """

    model_config = ConfigDict(extra="forbid")

    user_id: RawId
    context: dict[str, ContextValue] | None = None
    k: StrictInt = Field(10, ge=1, le=MAX_K)
    exclude_seen: StrictBool = True
    exclude_items: list[RawId] = Field(default_factory=list, max_length=10_000)
    user_features: dict[str, RawId] | None = None


class SimilarItemsRequest(BaseModel):
    """``POST /v1/similar-items``: the ``k`` nearest items to ``item_id`` in the item embedding space
    (inner product of item tower outputs), the item itself excluded."""

    model_config = ConfigDict(extra="forbid")

    item_id: RawId
    k: StrictInt = Field(10, ge=1, le=MAX_K)


class ScoredItem(BaseModel):
    """One result: raw ``item_id``, ``score`` (inner product; head score in ``scoring_layer`` mode;
    train interaction count on the popularity path) and ``title`` when the catalogue has one."""

    item_id: str
    score: float
    title: str | None = None


class RecommendResponse(BaseModel):
    """Answer of ``POST /v1/recommend``.

    ``path``: ``model`` (known user) or ``cold_start`` (unknown user); ``cold_start_strategy``:
    ``user_features`` (user tower with the out-of-vocabulary id, request features and context) or
    ``popularity`` (nothing known about the user), None on the model path. ``index_version``: the index
    that answered (None on the popularity path). ``context``: the resolved context fields used.
    """

    user_id: str
    items: list[ScoredItem]
    path: RecommendPath
    cold_start_strategy: Literal["user_features", "popularity"] | None = None
    model_version: str
    index_version: str | None = None
    context: dict[str, float | int] = Field(default_factory=dict)


class SimilarItemsResponse(BaseModel):
    item_id: str
    items: list[ScoredItem]
    model_version: str
    index_version: str


class ContextField(BaseModel):
    """One context field: ``kind`` numeric (float) or categorical (integer index 1..cardinality-1 or a
    raw value from ``values``)."""

    name: str
    kind: str
    cardinality: int = 0
    values: list[str] | None = None


class ShardStatus(BaseModel):
    shard: int
    loaded: bool
    version: str | None = None
    loaded_versions: list[str] = Field(default_factory=list)
    count: int = 0
    last_error: str | None = None


class IndexSummary(BaseModel):
    """The manifest of the index currently answering (see ``twotower.index.manifest``)."""

    version: str | None = None
    path: str | None = None
    dim: int | None = None
    factory: str | None = None
    num_items: int | None = None
    num_shards: int = 0
    search_params: dict = Field(default_factory=dict)
    created_at: str | None = None
    checkpoint_sha256: str | None = None
    shards: list[ShardStatus] = Field(default_factory=list)


class ModelInfo(BaseModel):
    """Answer of ``GET /v1/model``."""

    model_version: str
    context_mode: str
    context_schema: list[ContextField]
    accepts_timestamp: bool = True
    user_features: list[str] = Field(default_factory=list)
    num_users: int
    num_items: int
    history_length: int
    index: IndexSummary


class ErrorBody(BaseModel):
    """Body of every 4xx/5xx answer: ``error`` code, human ``message`` naming the field(s), ``fields``;
    on 503 also ``unavailable`` (the deployments that did not answer) and ``retry_after_s`` (as the
    ``Retry-After`` header)."""

    error: str
    message: str
    fields: list[str] = Field(default_factory=list)
    unavailable: list[str] | None = None
    retry_after_s: int | None = None
