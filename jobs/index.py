"""``index`` command: embed an item catalogue with a trained checkpoint and build sharded FAISS indexes.

    python -m twotower.jobs.index --checkpoint runs/x/best --dataset datasets/ml-1m --out indexes/ml-1m \\
        --shards 4 --factory "IVF1024,Flat" --nprobe 64

Mounting in another CLI: ``add_subparser(subparsers)`` registers ``index`` and sets ``func`` (returns the
exit code). Exit codes: 0 ok, 2 bad input (output exists, unreadable checkpoint, a dataset the checkpoint
was not trained on, reused embeddings of another checkpoint, factory that does not fit the data, bad
item indices). Output layout: :mod:`twotower.index.manifest`.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys

from twotower.jobs.common import run_standalone, setup_logging

log = logging.getLogger("twotower.index")


def configure(p: argparse.ArgumentParser) -> None:
    """Add the ``index`` options to ``p`` and set ``func``."""
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (local path or URI)")
    p.add_argument("--dataset", help="prepared dataset directory or URI; its items.parquet is the catalogue")
    p.add_argument("--items", nargs="*", default=[], metavar="PARQUET",
                   help="more item parquet files/directories (columns item_idx, item_id)")
    p.add_argument("--out", required=True, help="output index directory (local path or URI; written atomically)")
    p.add_argument("--shards", type=int, default=1, help="number of index shards S (hash of item_id mod S)")
    p.add_argument("--factory", default="Flat",
                   help='FAISS factory string: "Flat" (exact), "IVF{nlist},Flat", "IVF{nlist},PQ{m}", "HNSW{M}"')
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists probed per query (default max(8, nlist/8))")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW efSearch (default 128)")
    p.add_argument("--ef-construction", type=int, default=40, help="HNSW efConstruction")
    p.add_argument("--batch-size", type=int, default=4096, help="items per embedding batch")
    p.add_argument("--actors", type=int, default=2, help="embedding actor pool size")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--build-cpus", type=int, default=1, help="CPUs / FAISS threads per shard-building task")
    p.add_argument("--gpu", action="store_true", help="embed on GPU (one per actor)")
    p.add_argument("--no-embeddings", action="store_true", help="do not keep embeddings/ in the output")
    p.add_argument("--embeddings", metavar="DIR", help="reuse the embeddings/ of an earlier index built from the "
                                                       "same checkpoint: skips the embedding stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.set_defaults(func=run)


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``index`` on an ``argparse`` sub-parsers object; returns the new parser."""
    p = subparsers.add_parser("index", help="build sharded FAISS indexes of the item catalogue",
                              description="Embed the item catalogue with a checkpoint's item tower (Ray Data) "
                                          "and build S FAISS index shards with a manifest (Ray tasks).")
    configure(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``index`` command; returns the exit code."""
    from twotower.distributed.index_job import IndexJobConfig, run_index_job
    from twotower.index.build import IndexBuildError
    from twotower.model.checkpoint import CheckpointError

    setup_logging(log, args.quiet)
    if not args.dataset and not args.items and not args.embeddings:
        print("twotower index: error: give --dataset and/or --items (or --embeddings)", file=sys.stderr)
        return 2
    cfg = IndexJobConfig(checkpoint=args.checkpoint, out=args.out, dataset=args.dataset, items=list(args.items),
                         num_shards=args.shards, factory=args.factory, nprobe=args.nprobe, ef_search=args.ef_search,
                         ef_construction=args.ef_construction, batch_size=args.batch_size, num_actors=args.actors,
                         cpus_per_actor=args.cpus_per_actor, use_gpu=args.gpu, build_cpus=args.build_cpus,
                         keep_embeddings=not args.no_embeddings, overwrite=args.overwrite, seed=args.seed,
                         embeddings=args.embeddings)
    try:
        manifest = run_index_job(cfg)
    except Exception as e:      # Ray wraps errors raised in tasks and actors: report the original one
        message = user_error(e, (FileExistsError, FileNotFoundError, CheckpointError, IndexBuildError, ValueError))
        if message is None:
            raise
        print(f"twotower index: error: {message}", file=sys.stderr)
        return 2
    summary = {"out": args.out, "num_items": manifest.num_items, "shards": [s.count for s in manifest.shards],
               "factory": manifest.factory, "search_params": manifest.search_params,
               "embed": manifest.extra["job"]["embed"],
               "build_seconds_total": manifest.extra["job"]["build_seconds_total"]}
    print(json.dumps(summary))
    return 0


def user_error(e: BaseException, kinds: tuple[type[BaseException], ...]) -> str | None:
    """Message of the input error behind ``e`` when it is one of ``kinds``, else None.

    Ray wraps errors of tasks (``RayTaskError``, a subclass of the original type) and of Ray Data UDFs
    (``UserCodeException``, whose original error survives only in the remote traceback text); the
    innermost ``<Kind>: message`` line of that text is used then.
    """
    inner = getattr(e, "cause", None)
    if isinstance(inner, kinds):
        return str(inner)
    if isinstance(e, kinds) and not type(e).__module__.startswith("ray"):
        return str(e)
    names = "|".join(k.__name__ for k in kinds)
    found = re.findall(rf"^(?:[\w.]+\.)?({names}): (.+)$", str(e), flags=re.MULTILINE)
    return found[-1][1] if found else None


def main(argv: list[str] | None = None) -> int:
    """``python -m twotower.jobs.index``; returns the exit code."""
    return run_standalone("twotower index", "Build sharded FAISS item indexes.", configure, argv)


if __name__ == "__main__":
    sys.exit(main())
