"""The serving answers in this process, without Ray: notebooks, batch scripts, evaluation, tests.

    from twotower.serve import Recommender
    rec = Recommender.load("runs/ml-100k/best_checkpoint", index="indexes/ml-100k")   # index=None: exact
    rec.recommend("1", context={"timestamp": 880000000}, k=5).items
    rec.similar_items("50", k=5)

:class:`Recommender` answers exactly like ``POST /v1/recommend`` and ``POST /v1/similar-items``: the
arguments are validated by the same request models, then the same pipeline
(:func:`~.recommender.recommend` / :func:`~.recommender.similar_items`: plan, encode, search, re-rank)
runs over a :class:`LocalBackend` (the checkpoint's QueryEncoder and the whole index in this process)
instead of the Serve deployments, and returns the same response models. Bad input raises the
:class:`~.schema.RequestError` whose ``field`` and ``status`` the HTTP error body would carry.

Synchronous, loop-safe: the pipeline is a coroutine (the Serve ingress awaits its deployments), but every
``await`` on a LocalBackend completes without suspending, so :func:`run_local` drives it to the end in the
calling thread without an event loop. It therefore works the same inside a running loop (Jupyter, async
code), where ``asyncio.run`` would refuse.

No Ray: nothing here (nor anything it imports) imports ``ray``.
"""
from __future__ import annotations

import os
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from twotower.index import ShardedIndex, checkpoint_record, flat_index
from twotower.model.checkpoint import CheckpointInfo, read_checkpoint

from .catalogue import Catalogue
from .http import validation_message
from .loading import load_encoder, load_serving_state
from .query import QueryEncoder, QueryInput
from .recommender import ServingState, recommend, similar_items
from .contract import request_models
from .schema import RecommendResponse, RequestError, SimilarItemsResponse
from .shards import index_version

EXACT_INDEX_VERSION = "exact"      # index_version of the answers of the in-memory exact index (index=None)
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class LocalBackend:
    """In-process :class:`~.recommender.Backend`: a QueryEncoder and a ShardedIndex (all shards) here.

    Its coroutines never suspend (see :func:`run_local`). ``version`` is the ``index_version`` it answers.
    """

    def __init__(self, encoder: QueryEncoder, index: ShardedIndex, version: str = EXACT_INDEX_VERSION):
        self.encoder, self.index, self.version = encoder, index, version

    async def encode(self, query: QueryInput) -> np.ndarray:
        return self.encoder.encode([query])[0]

    async def search(self, query: np.ndarray, k: int, exclude: np.ndarray | None):
        excl = [exclude if exclude is not None else ()]
        scores, items = self.index.search(np.asarray(query, np.float32)[None, :], k, exclude=excl)
        return self.version, scores[0], items[0]

    async def rerank(self, query: QueryInput, candidates: np.ndarray) -> np.ndarray:
        return self.encoder.rerank([query], np.asarray(candidates, np.int64)[None, :])[0]

    async def item_vector(self, item_idx: int) -> np.ndarray:
        return self.encoder.item_vectors(np.asarray([item_idx]))[0]


def run_local(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never suspends (the pipeline over a :class:`LocalBackend`), run to
    completion in this thread without an event loop (so also inside a running one).

    Raises:
        whatever the coroutine raises; RuntimeError when it does suspend (a backend awaiting real I/O:
        run that one with ``await`` or ``asyncio.run`` instead).
    """
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the pipeline suspended: its backend is not local (await it in an event loop instead)")


def exact_index(encoder: QueryEncoder, catalogue: Catalogue, info: CheckpointInfo) -> ShardedIndex:
    """Exact in-memory index (:func:`twotower.index.flat_index`) over every known item 1..n-1 of the
    catalogue, with the item tower outputs of ``encoder`` (float32 (n-1, D)): the exact twin of a
    ``Flat`` index directory built from the same checkpoint."""
    idx = np.arange(1, catalogue.num_items, dtype=np.int64)
    return flat_index(encoder.item_vectors(idx), idx, catalogue.item_ids[1:], checkpoint=checkpoint_record(info),
                      normalized=info.model_config.l2_normalize)


def open_index(index_dir: str | os.PathLike, info: CheckpointInfo) -> tuple[ShardedIndex, str]:
    """(every shard of ``index_dir``, its index version) after the serving checks: files' sha256 and built
    from ``info``'s checkpoint. Raises IndexFormatError (see ``ShardedIndex.load``, ``verify_checkpoint``)."""
    index = ShardedIndex.load(index_dir)
    index.verify_checkpoint(info.model_sha256)
    return index, index_version(str(index_dir))


def _plain(value: Any) -> Any:
    """NumPy scalars / arrays (also inside dicts, lists, tuples) as the Python values a JSON body carries."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def validated(model: type[M], **fields: Any) -> M:
    """``model`` (a request model) validated from keyword fields, as the JSON body of the same fields.

    Raises:
        RequestError: status 422 naming the first invalid field (``k``, ``context.hour_sin``); its message
            is the HTTP 422 body's ``message``.
    """
    body = {name: _plain(v) for name, v in fields.items()}
    try:
        return model.model_validate(body)
    except ValidationError as e:
        message, names = validation_message([{**err, "loc": ("body", *err["loc"])} for err in e.errors()])
        raise RequestError(names[0], message.removeprefix(f"{names[0]}: ")) from e


class Recommender:
    """Recommendations and similar items from one checkpoint, in this process (see the module docstring).

    Attributes:
        state: the :class:`~.recommender.ServingState` (user state, catalogue, schema, context vocabularies).
        encoder: the checkpoint's :class:`~.query.QueryEncoder`. index: the :class:`ShardedIndex` searched.
        backend: the :class:`LocalBackend` over them. model_version / index_version / mode: as in responses.
    """

    def __init__(self, state: ServingState, encoder: QueryEncoder, index: ShardedIndex,
                 index_version: str = EXACT_INDEX_VERSION):
        self.state, self.encoder, self.index = state, encoder, index
        self.backend = LocalBackend(encoder, index, index_version)
        # the request models the HTTP API validates with (and publishes): same checks, same messages
        self._recommend_request, self._similar_request = request_models(state)

    model_version = property(lambda self: self.state.model_version)
    index_version = property(lambda self: self.backend.version)
    mode = property(lambda self: self.state.mode)

    @classmethod
    def load(cls, checkpoint: str | os.PathLike, index: str | os.PathLike | None = None,
             dataset: str | os.PathLike | None = None, user_cache: str | os.PathLike | None = None) -> "Recommender":
        """Load what ``twotower serve`` loads, once (``checkpoint.json`` read once), in this process.

        Args:
            checkpoint: checkpoint directory (local or URI). dataset: prepared dataset it was trained on
                (default: the checkpoint's ``dataset_dir``). user_cache: ``trilinear`` / ``scoring_layer``
                per-user table directory (default: built here, see :func:`~.loading.load_encoder`).
            index: index directory (``twotower index``; every shard loaded, sha256-verified, checked to be
                built from ``checkpoint``); None: exact search over all item embeddings in memory
                (:func:`exact_index`, ``index_version`` ``"exact"``).
        Raises:
            CheckpointError, FileNotFoundError / IncompatibleDatasetError (dataset), UserCacheError,
            IndexFormatError (index).
        """
        info = read_checkpoint(checkpoint)
        state = load_serving_state(info, dataset)
        encoder = load_encoder(info, dataset, user_cache, users=state.users)
        if index is None:
            return cls(state, encoder, exact_index(encoder, state.catalogue, info))
        return cls(state, encoder, *open_index(index, info))

    def recommend(self, user_id: str | int, context: Mapping[str, Any] | None = None, k: int = 10,
                  exclude_seen: bool = True, exclude_items: Sequence[str | int] | None = None,
                  user_features: Mapping[str, Any] | None = None,
                  recent_items: Sequence[str | int] | None = None) -> RecommendResponse:
        """``POST /v1/recommend`` in this process (fields as in :class:`~.schema.RecommendRequest`).

        Args:
            user_id: raw user id; unknown ids take the cold-start path (``user_features``, else popularity).
            context: named context fields and/or ``timestamp`` (unix s, UTC); None: the current time (only
                for a model without stored context fields, which must always be given).
            k: 1..1000. exclude_seen: drop every item of the user's history. exclude_items: raw item ids.
            user_features: cold-start raw values by kind (``GET /v1/model``'s ``user_feature_schema``).
            recent_items: raw item ids the user just interacted with, oldest first (at most 200), appended
                to the stored sequence; unknown ids are listed in ``unknown_recent_items``.
        Returns:
            RecommendResponse: ``items`` (item_id, score float, title) best first (score desc, ties by
            ascending item index), ``path``, ``cold_start_strategy``, versions, resolved ``context``.
        Raises:
            RequestError: status 422 naming the field (``k``, ``context.day_of_week``, ``user_features.x``).
        """
        req = validated(self._recommend_request, user_id=user_id, context=context, k=k, exclude_seen=exclude_seen,
                        exclude_items=[] if exclude_items is None else exclude_items, user_features=user_features,
                        recent_items=[] if recent_items is None else recent_items)
        return run_local(recommend(req, self.state, self.backend))

    def similar_items(self, item_id: str | int, k: int = 10) -> SimilarItemsResponse:
        """``POST /v1/similar-items`` in this process: the ``k`` items of largest inner product with the
        item's embedding, itself excluded.

        Raises:
            RequestError: unknown item (status 404, field ``item_id``); bad ``k`` (422, ``k``).
        """
        req = validated(self._similar_request, item_id=item_id, k=k)
        return run_local(similar_items(req, self.state, self.backend))

    def __repr__(self) -> str:
        return (f"Recommender(model {self.model_version}, {self.mode.value}, index {self.index_version}: "
                f"{self.index.factory}, {self.index.num_shards} shard(s), {self.index.num_items} items)")
