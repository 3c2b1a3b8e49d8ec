"""twotower.serve: context-aware top-k retrieval over HTTP with Ray Serve.

Pure modules (no Ray; unit-tested without Serve):

* :mod:`.schema` pydantic request/response models, :class:`~.schema.RequestError` (4xx naming a field);
* :mod:`.contract` the request models of one loaded model (what ``/openapi.json`` publishes), examples;
* :mod:`.context` request context (named fields or ``timestamp``) -> the model's context features;
* :mod:`.user_state` raw user id -> index, latest history, seen items, cold-start user features;
* :mod:`.catalogue` item ids, titles, popularity;
* :mod:`.query` :class:`~.query.QueryEncoder`: query vectors per context mode, scoring-layer re-rank;
* :mod:`.user_cache` the per-user table of trilinear / scoring_layer serving;
* :mod:`.shards` one-shard loading, index versions, batched shard search, exact merge;
* :mod:`.fanout` fan-out to every shard with version agreement during index swaps;
* :mod:`.recommender` ``recommend`` / ``similar_items``: the one pipeline used offline and behind HTTP;
* :mod:`.loading` building those pieces from a checkpoint + dataset; :mod:`.config` app args + Serve YAML;
* :mod:`.offline` :class:`~.offline.Recommender` (exported here as ``twotower.serve.Recommender``): that
  pipeline in this process, for notebooks and batch scripts, answering exactly like the HTTP API.

Ray Serve: :mod:`.app` (deployments ``Ingress``, ``QueryEncoder``, ``Searcher0..S-1`` and
``build_app``), :mod:`.routes` (the routes, declared responses and examples of an Ingress replica's
FastAPI app), :mod:`.demo` (the ``/demo`` page and ``/v1/users``), :mod:`.colocated` (encode and search
in the Ingress replica), :mod:`.metrics` (Prometheus metrics, draining), :mod:`.http` (error mapping),
:mod:`.deploy` (``serve deploy`` from Python, graceful drain). Command line: ``twotower serve``
(:mod:`twotower.jobs.serve`); operating it: ``docs/operating.md``.
"""

__all__ = ["Recommender"]


def __getattr__(name: str):
    """``Recommender`` imported on first use, so ``import twotower.serve.config`` (the CLI) stays light."""
    if name == "Recommender":
        from .offline import Recommender
        return Recommender
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
