"""The ``twotower`` console script: one subcommand per job (prepare, train, evaluate, ...).

Each job module exposes ``add_subparser(subparsers)`` (registering its parser with ``func`` set to a
callable taking the parsed args and returning an exit code) and ``main(argv)`` for ``python -m``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

JOBS = ("prepare", "train", "evaluate", "index", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twotower", description="Two-tower retrieval on Ray: "
                                     "prepare data, train, evaluate, index, serve.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(JOBS) + "}")
    for name in JOBS:
        importlib.import_module(f"twotower.jobs.{name}").add_subparser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
