"""``serve`` command: context-aware top-k retrieval over HTTP with Ray Serve.

    twotower serve --index runs/index --checkpoint runs/ml-1m/best_checkpoint --host 127.0.0.1 --port 8000
    python -m twotower.jobs.serve --index DIR --checkpoint DIR --dataset DIR --port 8000
    twotower serve --index DIR --checkpoint DIR --write-config serve.yaml   # then: serve deploy serve.yaml
    twotower serve --config serve.yaml                                        # deploy an existing config
    twotower serve --checkpoint DIR --write-user-cache DIR                    # trilinear per-user table

Starts a local Ray (:func:`~twotower.distributed.local_ray.start_ray`: loopback-only, dashboard on
127.0.0.1) or joins ``--address`` / ``$RAY_ADDRESS``, starts Serve with its HTTP proxy on ``--host:--port``
(127.0.0.1 by default: nothing listens on another address unless asked), deploys the application
declaratively (like ``serve deploy``, so an edited config can later swap the index in place), waits
until ``/healthz`` is ready and serves until Ctrl-C. Exit codes: 0 ok, 2 bad input (checkpoint, index,
dataset, config), 1 Serve failed to start. SIGTERM stops it like Ctrl-C, gracefully: requests in flight are
answered before the replicas stop.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import yaml
from pydantic import ValidationError

from twotower.index.manifest import IndexFormatError, Manifest
from twotower import storage
from twotower.model.checkpoint import CheckpointError, read_checkpoint
from twotower.serve.config import APP_NAME, AppArgs, Scaling, serve_config, write_serve_config
from twotower.jobs.common import run_standalone


def configure(p: argparse.ArgumentParser) -> None:
    """Add the ``serve`` arguments to ``p`` and set ``func``."""
    p.add_argument("--index", help="index directory or URI (twotower index); served by one searcher per shard")
    p.add_argument("--checkpoint", help="checkpoint directory or URI (twotower train)")
    p.add_argument("--dataset", help="prepared dataset directory or URI (default: the checkpoint's dataset_dir)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--config", help="deploy this Serve config file instead of one built from the flags")
    p.add_argument("--write-config", metavar="FILE", help="write the Serve config (serve deploy-able) and exit")
    p.add_argument("--write-user-cache", metavar="DIR", help="build the per-user table (trilinear / "
                   "scoring_layer) into DIR and exit")
    p.add_argument("--user-cache", help="per-user table written by --write-user-cache (else built at startup)")
    p.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else start a local one)")
    p.add_argument("--app-name", default=APP_NAME)
    p.add_argument("--route-prefix", default="/")
    p.add_argument("--shard-replicas", type=int, default=1, help="replicas of each shard searcher")
    p.add_argument("--encoder-replicas", type=int, default=1)
    p.add_argument("--ingress-replicas", type=int, default=1)
    p.add_argument("--num-cpus", type=float, default=0.25, help="logical CPUs reserved per replica (scheduling only)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of index files")
    p.add_argument("--colocate", action="store_true", help="encode and search in the Ingress replica (the whole "
                   "index in each; no encoder / searcher deployments): lowest latency for an index that fits")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for /healthz")
    d = Scaling()
    p.add_argument("--max-encoder-replicas", type=int, default=d.max_encoder_replicas,
                   help="autoscaling maximum of the query encoder (minimum: --encoder-replicas)")
    p.add_argument("--max-shard-replicas", type=int, default=d.max_shard_replicas,
                   help="autoscaling maximum of each shard searcher (minimum: --shard-replicas)")
    p.add_argument("--max-ingress-replicas", type=int, default=d.max_ingress_replicas,
                   help="with --colocate: autoscaling maximum of the Ingress (minimum: --ingress-replicas)")
    p.add_argument("--target-ongoing-requests", type=float, default=d.target_ongoing_requests,
                   help="ongoing requests per replica the autoscaler aims at")
    p.add_argument("--max-queued-requests", type=int, default=d.max_queued_requests,
                   help="requests queued at the proxy beyond those being served; more get 503 + Retry-After")
    p.set_defaults(func=run)


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``serve`` on an ``argparse`` sub-parsers object; returns the new parser."""
    p = subparsers.add_parser("serve", help="serve top-k retrieval over HTTP (Ray Serve)",
                              description="Ray Serve application answering context-aware top-k queries.")
    configure(p)
    return p


def build_config(args: argparse.Namespace) -> dict:
    """The Serve config from ``--config`` or the flags.

    Raises:
        ValueError: missing flags. CheckpointError: unreadable checkpoint. IndexFormatError: unreadable
            index manifest, or an index not built from ``--checkpoint`` (checked here, before Ray starts).
    """
    if args.config:
        return yaml.safe_load(Path(args.config).read_text())
    if not args.checkpoint or not args.index:
        raise ValueError("--checkpoint and --index are required (or give --config)")
    info = read_checkpoint(args.checkpoint)                                   # fail early, before Ray
    Manifest.read(args.index).verify_checkpoint(info.model_sha256, args.index)
    app = AppArgs(checkpoint=storage.normalize(args.checkpoint),
                  dataset=storage.normalize(args.dataset) if args.dataset else None,
                  user_cache=storage.normalize(args.user_cache) if args.user_cache else None,
                  shard_replicas=args.shard_replicas, encoder_replicas=args.encoder_replicas,
                  ingress_replicas=args.ingress_replicas, num_cpus=args.num_cpus, verify=not args.no_verify,
                  colocate=args.colocate)
    scaling = Scaling(max_encoder_replicas=args.max_encoder_replicas, max_shard_replicas=args.max_shard_replicas,
                      max_ingress_replicas=args.max_ingress_replicas,
                      target_ongoing_requests=args.target_ongoing_requests,
                      max_queued_requests=args.max_queued_requests)
    return serve_config(app, index=storage.normalize(args.index), host=args.host, port=args.port,
                        app_name=args.app_name, route_prefix=args.route_prefix, scaling=scaling)


def write_user_cache(args: argparse.Namespace) -> str:
    """``--write-user-cache DIR``: build and write the per-user table; returns DIR.

    Raises:
        ValueError: no ``--checkpoint``; CheckpointError / FileNotFoundError / IncompatibleDatasetError:
            see :func:`twotower.serve.loading.resolve_dataset`.
    """
    from twotower.model.checkpoint import load_checkpoint
    from twotower.serve.loading import load_user_state, resolve_dataset
    from twotower.serve.user_cache import build_user_cache, save_user_cache

    if not args.checkpoint:
        raise ValueError("--write-user-cache needs --checkpoint")
    info = read_checkpoint(args.checkpoint)
    state = load_user_state(info, resolve_dataset(info, args.dataset))
    table = build_user_cache(load_checkpoint(info.path, info=info).model, state)
    return save_user_cache(args.write_user_cache, table, info.model_sha256, state)


def serve_forever(config: dict, address: str | None, ready_timeout: float) -> int:
    """Start Ray + Serve, deploy ``config``, wait for /healthz, block until Ctrl-C; returns an exit code."""
    import ray
    from ray import serve

    from twotower.distributed.local_ray import start_ray
    from twotower.serve.deploy import deploy_config, drain, wait_ready

    def _stop(signum, frame):
        raise KeyboardInterrupt

    http = config.get("http_options") or {"host": "127.0.0.1", "port": 8000}
    # a local Ray is loopback-only, its dashboard (the declarative deploy's API) on 127.0.0.1; only the
    # HTTP proxy follows --host
    ctx = start_ray(dashboard=True, address=address)
    if ctx is None:                                    # no RayContext, so no dashboard URL to deploy through
        print("twotower serve: Ray is already initialised in this process; serve starts or joins its own",
              file=sys.stderr)
        return 1
    # after ray.init (which installs its own SIGTERM handler): SIGTERM shuts down like Ctrl-C, through
    # serve.shutdown() and ray.shutdown(); SIGINT works even when started with it ignored (``cmd &``)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        serve.start(http_options=http, proxy_location=config.get("proxy_location", "HeadOnly"))
        deploy_config(config, ctx.dashboard_url)
        host = "127.0.0.1" if http["host"] in ("0.0.0.0", "::") else http["host"]
        for app in config["applications"]:
            base = f"http://{host}:{http['port']}{app.get('route_prefix', '/').rstrip('/')}"
            wait_ready(base, ready_timeout)
            print(f"serving {app['name']} at {base} (OpenAPI: {base}/docs); Ctrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        # graceful: the Ingress drains (new requests 503 + Retry-After, /healthz 503) until the requests in
        # flight are answered; only then are the applications deleted (which stops encoder and searchers)
        print("twotower serve: draining, then stopping", flush=True)
        try:
            if not drain(config, ctx.dashboard_url):
                print("twotower serve: requests still in flight after 30 s; stopping anyway", file=sys.stderr)
        except Exception as e:                        # e.g. interrupted before the application was up
            print(f"twotower serve: could not drain ({type(e).__name__}: {e}); stopping", file=sys.stderr)
        return 0
    except (TimeoutError, RuntimeError) as e:
        print(f"twotower serve: {e}", file=sys.stderr)
        return 1
    finally:
        for app in config["applications"]:
            serve.delete(app["name"])
        if not address:
            serve.shutdown()
        ray.shutdown()


def run(args: argparse.Namespace) -> int:
    try:
        if args.write_user_cache:
            print(f"wrote {write_user_cache(args)}")
            return 0
        config = build_config(args)
        if args.write_config:
            print(f"wrote {write_serve_config(args.write_config, config)}")
            return 0
    except (ValueError, ValidationError, CheckpointError, IndexFormatError, FileNotFoundError, OSError) as e:
        print(f"twotower serve: {e}", file=sys.stderr)
        return 2
    # as a submitted Ray job (``ray job submit -- twotower serve ...``) RAY_ADDRESS names the cluster: join it and,
    # on exit, delete only this application instead of shutting down Serve for the whole cluster
    return serve_forever(config, args.address or os.environ.get("RAY_ADDRESS"), args.ready_timeout)


def main(argv: list[str] | None = None) -> int:
    """``python -m twotower.jobs.serve``; returns the exit code."""
    return run_standalone("twotower serve", __doc__.splitlines()[0], configure, argv)


if __name__ == "__main__":
    sys.exit(main())
