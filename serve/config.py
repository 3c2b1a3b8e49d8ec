"""Serving configuration: the application builder's arguments and the ``serve deploy`` YAML.

The Serve config file (``twotower serve --write-config FILE`` writes one; ``serve/config.example.yaml``
is an example) has one application whose ``import_path`` is ``twotower.serve.app:build_app`` with
:class:`AppArgs` as ``args``, and one entry per deployment: ``Ingress``, ``QueryEncoder`` and
``Searcher0`` .. ``Searcher{S-1}``. The index directory is *not* an app argument: it is the
``user_config.index_dir`` of every searcher. Changing only ``user_config`` and running ``serve deploy``
again reconfigures the running searchers in place (each loads the new version, keeps the old one for
in-flight fan-outs, see :mod:`twotower.serve.fanout`): an index swap without restarts or failed
requests. Changing ``args`` restarts the replicas (Serve's rolling update).

Operating knobs (:class:`Scaling`, in the deployments' entries, so they can be edited in the file): the
``QueryEncoder`` and every ``SearcherK`` (colocated: the ``Ingress``, which encodes and searches) carry an ``autoscaling_config`` (``num_replicas: auto``, min / max
replicas, target ongoing requests per replica, up/downscale delays); the ``Ingress`` carries
``max_queued_requests`` (requests queued at each proxy beyond its replicas' ``max_ongoing_requests``) and a
``backpressure_config``: a request beyond that queue gets a 503 with ``Retry-After`` from the proxy at once.
Its ``user_config.draining`` (:func:`draining`) makes it answer new requests 503 while those in flight
finish: ``twotower serve`` deploys that before deleting the application (graceful shutdown).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from twotower.index.manifest import Manifest

IMPORT_PATH = "twotower.serve.app:build_app"
APP_NAME = "twotower"


class AppArgs(BaseModel):
    """Arguments of :func:`twotower.serve.app.build_app`.

    Attributes:
        checkpoint: checkpoint directory. dataset: prepared dataset (default: the checkpoint's).
        index: initial index directory (optional: the searchers' ``user_config.index_dir`` wins).
        num_shards: number of searcher deployments (default: read from ``index``'s manifest).
        user_cache: precomputed per-user table (trilinear / scoring_layer), built at startup if absent.
        shard_replicas / encoder_replicas / ingress_replicas: replicas per deployment.
        num_cpus: logical CPUs reserved per replica (Ray scheduling only).
        encoder_threads / search_threads: torch / FAISS threads per replica.
        max_batch_size / batch_wait_timeout_s: ``serve.batch`` settings of encoder and searchers.
        max_ongoing_requests: per replica of every deployment.
        access_log: Serve's per-request access log of the ingress (the internal deployments never log
            each call: at thousands of calls per second that is a visible share of the latency).
        verify: check the sha256 of index files when loading.
        backend_timeout_s: how long (seconds) one request may wait for the query encoder and for the
            shard searchers' fan-out, retries included, before it fails with 503 (a replica restarting
            after a crash: Serve queues calls to a deployment with no live replica without a limit).
        retry_after_s: the ``Retry-After`` (seconds) of those 503 answers.
        health_check_period_s: how often Serve's controller checks each replica (seconds); a killed
            replica is noticed and replaced at the next check (Serve's own default is 10 s).
        colocate: encode and search in the Ingress replica, the whole index in each one, no QueryEncoder
            or Searcher deployments (:mod:`twotower.serve.colocated`): the lowest latency, for an index
            that fits one replica's memory; the index is then the Ingress's ``user_config.index_dir``.
    """

    model_config = ConfigDict(extra="forbid")

    checkpoint: str
    dataset: str | None = None
    index: str | None = None
    num_shards: int | None = Field(None, ge=1)
    user_cache: str | None = None
    shard_replicas: int = Field(1, ge=1)
    encoder_replicas: int = Field(1, ge=1)
    ingress_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.25, ge=0)
    encoder_threads: int = Field(1, ge=1)
    search_threads: int = Field(1, ge=1)
    max_batch_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.002, ge=0)
    max_ongoing_requests: int = Field(64, ge=1)
    access_log: bool = True
    verify: bool = True
    backend_timeout_s: float = Field(10.0, gt=0)
    retry_after_s: int = Field(2, ge=1)
    health_check_period_s: float = Field(2.0, gt=0)
    colocate: bool = False

    def shards(self) -> int:
        """S: ``num_shards`` or the index manifest's shard count. Raises ValueError when neither is known."""
        if self.num_shards is not None:
            return self.num_shards
        if self.index is None:
            raise ValueError("give num_shards or index (to read the shard count from its manifest)")
        return Manifest.read(self.index).num_shards


class Scaling(BaseModel):
    """Autoscaling and backpressure written into the Serve config (see the module docstring).

    Attributes:
        max_encoder_replicas / max_shard_replicas: autoscaling upper bounds (the lower bounds are
            ``AppArgs.encoder_replicas`` / ``shard_replicas``; a smaller maximum is raised to them).
        max_ingress_replicas: colocated serving only (the Ingress encodes and searches): its autoscaling
            upper bound (lower bound ``AppArgs.ingress_replicas``). The sharded app's Ingress is fixed.
        target_ongoing_requests: ongoing requests per replica the autoscaler aims at.
        upscale_delay_s / downscale_delay_s: how long (seconds) a decision must hold before it is applied.
        max_queued_requests: requests each proxy queues for the Ingress beyond those it is serving; more
            get 503 at once with ``Retry-After: AppArgs.retry_after_s``.
        ingress_max_ongoing_requests: per Ingress replica (None: ``AppArgs.max_ongoing_requests``).
    """

    model_config = ConfigDict(extra="forbid")

    max_encoder_replicas: int = Field(4, ge=1)
    max_shard_replicas: int = Field(4, ge=1)
    max_ingress_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float = Field(16.0, gt=0)
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)
    max_queued_requests: int = Field(256, ge=1)
    ingress_max_ongoing_requests: int | None = Field(None, ge=1)

    def autoscaling(self, min_replicas: int, max_replicas: int) -> dict:
        """A Serve ``autoscaling_config`` between ``min_replicas`` and max(``max_replicas``, min)."""
        return {"min_replicas": min_replicas, "max_replicas": max(min_replicas, max_replicas),
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s}


def searcher_name(shard: int) -> str:
    return f"Searcher{shard}"


def serve_config(args: AppArgs, *, index: str, host: str = "127.0.0.1", port: int = 8000,
                 app_name: str = APP_NAME, route_prefix: str = "/", scaling: Scaling | None = None) -> dict:
    """A ``serve deploy``-able config dict (Ray Serve ServeDeploySchema) serving ``index``, with the
    autoscaling and backpressure of ``scaling`` (default :class:`Scaling`).

    ``index`` goes into every searcher's ``user_config``; ``args.index`` is dropped from ``args`` (so an
    index swap is a user_config change) and ``num_shards`` is filled in from the manifest.
    """
    shards = args.model_copy(update={"index": index}).shards()
    app_args = args.model_dump(exclude_none=True, exclude={"index"})
    app_args["num_shards"] = shards
    sc = scaling or Scaling()
    actor = {"num_cpus": args.num_cpus}
    ingress = {"name": "Ingress", "num_replicas": args.ingress_replicas, "ray_actor_options": dict(actor),
               "max_ongoing_requests": sc.ingress_max_ongoing_requests or args.max_ongoing_requests,
               "max_queued_requests": sc.max_queued_requests,
               "backpressure_config": {"status_code": 503, "retry_after_s": args.retry_after_s},
               "user_config": {"draining": False}}
    if args.colocate:
        ingress["user_config"].update(index_dir=str(index), verify=args.verify)
        ingress.update(num_replicas="auto",
                       autoscaling_config=sc.autoscaling(args.ingress_replicas, sc.max_ingress_replicas))
        return _config(host, port, app_name, route_prefix, app_args, [ingress])
    encoder = {"name": "QueryEncoder", "num_replicas": "auto", "ray_actor_options": dict(actor),
               "autoscaling_config": sc.autoscaling(args.encoder_replicas, sc.max_encoder_replicas)}
    deployments = [ingress, encoder]
    deployments += [{"name": searcher_name(s), "num_replicas": "auto", "ray_actor_options": dict(actor),
                     "autoscaling_config": sc.autoscaling(args.shard_replicas, sc.max_shard_replicas),
                     "user_config": {"index_dir": str(index), "verify": args.verify}} for s in range(shards)]
    return _config(host, port, app_name, route_prefix, app_args, deployments)


def _config(host: str, port: int, app_name: str, route_prefix: str, app_args: dict, deployments: list) -> dict:
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": host, "port": int(port)},
        "applications": [{"name": app_name, "route_prefix": route_prefix, "import_path": IMPORT_PATH,
                          "args": app_args, "deployments": deployments}],
    }


def _edit_user_config(config: dict, app_name: str, names: Callable[[str], bool], **values) -> dict:
    """A copy of ``config`` with ``values`` set in the ``user_config`` of ``app_name``'s deployments whose
    name satisfies ``names``."""
    out = yaml.safe_load(yaml.safe_dump(config))
    for app in out["applications"]:
        if app["name"] == app_name:
            for d in app["deployments"]:
                if names(d["name"]):
                    d["user_config"] = {**(d.get("user_config") or {}), **values}
    return out


def with_index(config: dict, index: str, app_name: str = APP_NAME) -> dict:
    """A copy of ``config`` whose searchers of ``app_name`` (colocated: its Ingress) serve ``index`` (the
    index-swap edit)."""
    colocated = any(a["name"] == app_name and a["args"].get("colocate") for a in config["applications"])
    return _edit_user_config(config, app_name, lambda name: name.startswith("Searcher") or (
        colocated and name == "Ingress"), index_dir=str(index))


def draining(config: dict, app_name: str = APP_NAME) -> dict:
    """A copy of ``config`` whose ``app_name`` Ingress drains (``user_config.draining: true``)."""
    return _edit_user_config(config, app_name, lambda name: name == "Ingress", draining=True)


def write_serve_config(path: str | Path, config: dict) -> Path:
    """Write ``config`` as YAML to ``path``; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    header = ("# Ray Serve config for twotower: `serve deploy THIS_FILE` (or `twotower serve --config THIS_FILE`).\n"
              "# Index swap: change user_config.index_dir of every SearcherK and deploy again.\n")
    p.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return p
