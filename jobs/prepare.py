"""``prepare`` command: a prepared dataset from a team's own tables (a YAML spec), MovieLens files or
the synthetic generator -- three sources of one Ray Data job (:mod:`twotower.distributed.prepare`).

    python -m twotower.jobs.prepare table --spec dataset.yaml --out datasets/shop
    python -m twotower.jobs.prepare movielens --variant ml-1m --out datasets/ml-1m
    python -m twotower.jobs.prepare synthetic --users 100000 --items 50000 \\
        --interactions 5000000 --seed 0 --out datasets/synthetic

Mounting in another CLI: ``add_subparser(subparsers)`` registers ``prepare`` with the three
sub-commands and sets ``func``; the caller runs ``sys.exit(args.func(args))``. Exit codes: 0 ok,
2 for bad input (a bad spec, malformed files, output exists, data not found, bad options).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

from twotower.data.errors import DataFormatError
from twotower.data.locate import DownloadError
from twotower.data.movielens import VARIANTS
from twotower.jobs.common import run_standalone, setup_logging

log = logging.getLogger("twotower.data")


def _add_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output dataset directory or URI (s3://...; published when done)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def _add_common(p: argparse.ArgumentParser) -> None:
    _add_out(p)
    p.add_argument("--history-length", type=int, default=50, help="length N of an example's history")
    p.add_argument("--split", choices=("leave_last_out", "temporal"), default="leave_last_out")
    p.add_argument("--valid-fraction", type=float, default=0.1, help="temporal split only")
    p.add_argument("--test-fraction", type=float, default=0.1, help="temporal split only")
    p.add_argument("--block-rows", type=int, default=2_000_000,
                   help="interactions per shuffle partition: bounds each task's memory")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``table``, ``movielens`` and ``synthetic`` sub-commands to ``parser``."""
    sub = parser.add_subparsers(dest="source", required=True, metavar="{table,movielens,synthetic}")
    tab = sub.add_parser("table", help="prepare your own tables declared in a YAML spec",
                         description="Prepare interaction / user / item tables (parquet or csv, local or "
                                     "s3://...) declared in a dataset spec (see twotower.data.spec).")
    tab.add_argument("--spec", required=True, help="the dataset spec (YAML; local path or URI)")
    _add_out(tab)
    ml = sub.add_parser("movielens", help="prepare a MovieLens dataset",
                        description="Read GroupLens MovieLens files and write a prepared dataset.")
    ml.add_argument("--variant", choices=VARIANTS, required=True)
    ml.add_argument("--src", help="folder (or URI) holding the raw files (default: search, see --data-dir)")
    ml.add_argument("--data-dir", help="folder holding <variant>/ (searched before "
                                       "$TWOTOWER_DATA_DIR and ../shared/data)")
    ml.add_argument("--sha256", help="archive checksum, needed to download from GroupLens")
    ml.add_argument("--min-rating", type=float, default=None,
                    help="keep only ratings >= this (default: every rating is a positive)")
    _add_common(ml)
    syn = sub.add_parser("synthetic", help="generate a synthetic dataset with planted structure",
                         description="Stream a synthetic dataset (clusters, Zipf popularity, "
                                     "time-of-day effect) in the prepared-dataset layout.")
    syn.add_argument("--users", type=int, required=True)
    syn.add_argument("--items", type=int, required=True)
    syn.add_argument("--interactions", type=int, required=True)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--clusters", type=int, default=20)
    syn.add_argument("--successor", type=float, default=0.0,
                     help="probability that an interaction is the successor of the user's previous item "
                          "(planted sequential structure; default 0)")
    syn.add_argument("--chunk-users", type=int, default=50_000)
    _add_common(syn)
    parser.set_defaults(func=run)


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``prepare`` on an ``argparse`` sub-parsers object; returns the new parser."""
    p = subparsers.add_parser("prepare", help="prepare a dataset (your own tables, MovieLens or synthetic)",
                              description="Write a prepared dataset directory.")
    configure(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``prepare`` command; returns the process exit code."""
    setup_logging(log, args.quiet)
    t0 = time.time()
    try:
        from twotower.distributed import sources

        if args.source == "table":
            stats = sources.prepare_table(args.spec, args.out, overwrite=args.overwrite)
        else:
            common = dict(split=args.split, valid_fraction=args.valid_fraction, test_fraction=args.test_fraction,
                          history_length=args.history_length, block_rows=args.block_rows, overwrite=args.overwrite)
        if args.source == "movielens":
            from twotower.data.locate import find_movielens

            src = args.src or find_movielens(args.variant, args.data_dir, sha256=args.sha256)
            stats = sources.prepare_movielens(args.out, args.variant, src=src, min_rating=args.min_rating, **common)
        elif args.source == "synthetic":
            stats = sources.prepare_synthetic(args.out, args.users, args.items, args.interactions, args.seed,
                                              clusters=args.clusters, chunk_users=args.chunk_users,
                                              successor=args.successor, **common)
    except (DataFormatError, FileExistsError, FileNotFoundError, DownloadError, ValueError) as e:
        print(f"twotower prepare: error: {e}", file=sys.stderr)
        return 2
    rows = stats["rows"]
    print(f"wrote {args.out}: train {rows['train']:,} / valid {rows['valid']:,} / test "
          f"{rows['test']:,} interactions, {stats['users']:,} users, {stats['items']:,} items "
          f"in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m twotower.jobs.prepare {movielens,synthetic} ...``; returns the exit code."""
    return run_standalone("twotower prepare", "Write a prepared dataset.", configure, argv)


if __name__ == "__main__":
    sys.exit(main())
