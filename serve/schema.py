"""HTTP request/response models of the serving API (pydantic 2) and the error type naming a field.

Every request model forbids unknown top-level fields, so a misspelt field is a 422 naming it. Scalars
are strict where a silent conversion would hide a client bug (``k: "10"`` or ``k: true`` is rejected);
an integer field takes what JSON Schema calls an integer (``10`` and ``10.0``, not ``10.5``).

:class:`RecommendRequest` / :class:`SimilarItemsRequest` are the model-independent bases (offline use);
the HTTP app validates with their subclasses generated from the loaded model's schema
(:mod:`twotower.serve.contract`), so ``context`` and ``user_features`` are closed objects there and the
published OpenAPI document is the validation itself.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, Strict, StrictBool,
                      WithJsonSchema)

MAX_K = 1000
MAX_EXCLUDE_ITEMS = 10_000
MAX_RECENT_ITEMS = 200
RecommendPath = Literal["model", "cold_start"]     # which path answered: RecommendResponse.path
# a character that is not whitespace in Python's sense (``str.isspace``, what ``str.strip()`` removes),
# spelt out so that every regex dialect (ECMA 262, Python, Rust) reads the same class
NON_SPACE = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
RAW_ID_SCHEMA = {"anyOf": [{"type": "string", "minLength": 1, "pattern": NON_SPACE}, {"type": "integer"}]}


def json_int(value: object) -> int:
    """``value`` as an int when JSON Schema calls it an integer (an int, or a float with no fraction such
    as ``10.0``); raises ValueError for anything else (booleans, strings, ``10.5``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be an integer, got {type(value).__name__}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"must be an integer, got {value!r}")
    return int(value)


def _integral(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _scalar(value: object) -> object:
    if isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"must be a number, boolean or string, got {type(value).__name__}")


def _value(value: object) -> object:
    if isinstance(value, list):
        for x in value:
            _scalar(x)
        return value
    if isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"must be a number, boolean, string or a list of them, got {type(value).__name__}")


def raw_id(value: object) -> str:
    """A raw id (user, item, feature value) as the string it is looked up by: a string with a
    non-whitespace character (stripped), or an integer (``50`` and ``50.0`` are ``"50"``).

    Raises:
        ValueError: anything else (``""``, ``"  "``, ``true``, ``null``, ``1.5``, objects).
    """
    if isinstance(value, str):
        if value.strip():
            return value.strip()
    elif not isinstance(value, bool) and isinstance(value, (int, float)):
        try:
            return str(json_int(value))
        except ValueError:
            pass
    raise ValueError("must be a non-empty string or an integer")


# one validator (one error, located at the field) instead of a union's error per member type
_SCALAR_SCHEMA = {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}]}
Scalar = Annotated[Union[bool, int, float, str], PlainValidator(_scalar), WithJsonSchema(_SCALAR_SCHEMA)]
# a feature value: a scalar, or a list of scalars (multi_hot values, vectors); checked per kind later
FeatureValue = Annotated[Union[bool, int, float, str, list], PlainValidator(_value),
                         WithJsonSchema({"anyOf": [*_SCALAR_SCHEMA["anyOf"], {"type": "array", "items": _SCALAR_SCHEMA}]})]
RawId = Annotated[str, PlainValidator(raw_id), WithJsonSchema(RAW_ID_SCHEMA)]
JsonInt = Annotated[int, BeforeValidator(_integral), Strict()]     # 10 and 10.0; not "10", true or 10.5


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


# Here ``context`` and ``user_features`` values are checked against the model later (serve/context.py,
# UserState.encode_user_features); the HTTP app's generated subclass (serve/contract.py) checks them itself.
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
        user_features: raw user feature values (``{"gender": "F", "age_bucket": "25"}``; numbers for numeric
            and bucketized features, lists for multi_hot, a text for hashed_bag, ``dim`` numbers for vector)
            used only for unknown users (cold start); values not in the feature's vocabulary count as unknown.
        recent_items: raw item ids the user interacted with since the dataset was prepared, oldest first
            (newest last), at most ``MAX_RECENT_ITEMS``: appended to the user's stored sequence before it is
            encoded (the model's history is the newest ``history_length`` items of the extended sequence),
            and excluded with ``exclude_seen``. For an unknown user they are the whole history (cold start
            ``recent_items``). Ids not in the catalogue are left out and listed in the response's
            ``unknown_recent_items``.
    """

    model_config = ConfigDict(extra="forbid")

    user_id: RawId
    context: dict[str, FeatureValue] | None = None
    k: JsonInt = Field(10, ge=1, le=MAX_K)
    exclude_seen: StrictBool = True
    exclude_items: list[RawId] = Field(default_factory=list, max_length=MAX_EXCLUDE_ITEMS)
    user_features: dict[str, FeatureValue] | None = None
    recent_items: list[RawId] = Field(default_factory=list, max_length=MAX_RECENT_ITEMS)


class SimilarItemsRequest(BaseModel):
    """``POST /v1/similar-items``: the ``k`` nearest items to ``item_id`` in the item embedding space
    (inner product of item tower outputs), the item itself excluded."""

    model_config = ConfigDict(extra="forbid")

    item_id: RawId
    k: JsonInt = Field(10, ge=1, le=MAX_K)


class ScoredItem(BaseModel):
    """One result: raw ``item_id``, ``score`` (inner product; head score in ``scoring_layer`` mode;
    train interaction count on the popularity path) and ``title`` when the catalogue has one."""

    item_id: str
    score: float
    title: str | None = None


class RecommendResponse(BaseModel):
    """Answer of ``POST /v1/recommend``.

    ``path``: ``model`` (known user) or ``cold_start`` (unknown user); ``cold_start_strategy``:
    ``recent_items`` (user tower with the out-of-vocabulary id and the request's recent items as its
    history, plus any request features), ``user_features`` (the out-of-vocabulary id, request features
    and context) or ``popularity`` (nothing known about the user), None on the model path.
    ``unknown_recent_items``: the request's ``recent_items`` not in the catalogue (left out). ``index_version``: the index
    that answered (None on the popularity path). ``context``: the resolved context fields used.
    """

    user_id: str
    items: list[ScoredItem]
    path: RecommendPath
    cold_start_strategy: Literal["recent_items", "user_features", "popularity"] | None = None
    model_version: str
    index_version: str | None = None
    context: dict[str, float | int | list[int] | list[float]] = Field(default_factory=dict)
    unknown_recent_items: list[str] = Field(default_factory=list)


class SimilarItemsResponse(BaseModel):
    item_id: str
    items: list[ScoredItem]
    model_version: str
    index_version: str


class FeatureField(BaseModel):
    """One context field or user feature a request may give: its ``kind`` and what it takes.

    ``numeric`` / ``bucketized``: a raw number (the model standardises / bucketizes it at ``boundaries``);
    ``categorical``: an integer index 1..cardinality-1 (user features: 0..) or a raw value from ``values``;
    ``multi_hot``: a list of at most ``max_length`` such values; ``hashed_bag``: a text; ``vector``: exactly
    ``dim`` numbers. ``values``: the vocabulary (None without one; for user features only when it has at
    most 64 values). ``source``: ``timestamp`` for a context field derived from the request's timestamp.
    """

    name: str
    kind: str
    cardinality: int = 0
    values: list[str] | None = None
    max_length: int = 0
    dim: int = 0
    boundaries: list[float] | None = None
    source: str = ""


ContextField = FeatureField          # the name GET /v1/model's context_schema entries had first


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
    """Answer of ``GET /v1/model``: ``context_schema`` and ``user_feature_schema`` describe every field a
    request's ``context`` / ``user_features`` takes; ``accepts_timestamp``: the context takes ``timestamp``
    (the model has fields derived from it); ``user_features``: the user feature names."""

    model_version: str
    context_mode: str
    context_schema: list[FeatureField]
    accepts_timestamp: bool = True
    user_features: list[str] = Field(default_factory=list)
    user_feature_schema: list[FeatureField] = Field(default_factory=list)
    num_users: int
    num_items: int
    history_length: int
    index: IndexSummary


class ShardHealth(BaseModel):
    shard: int
    loaded: bool
    version: str | None = None
    last_error: str | None = None


class Health(BaseModel):
    """Answer of ``GET /healthz``: 200 with ``status: ready`` when every shard has an index loaded, else
    503 with ``not_ready``."""

    status: Literal["ready", "not_ready"]
    model_version: str
    index_versions: list[str]
    shards: list[ShardHealth]


class ErrorBody(BaseModel):
    """Body of every 4xx/5xx answer: ``error`` code, human ``message`` naming the field(s), ``fields``;
    on 503 also ``unavailable`` (the deployments that did not answer) and ``retry_after_s`` (as the
    ``Retry-After`` header)."""

    error: str
    message: str
    fields: list[str] = Field(default_factory=list)
    unavailable: list[str] | None = None
    retry_after_s: int | None = None
