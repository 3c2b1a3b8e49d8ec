"""What every job entry point shares: the standalone ``python -m twotower.jobs.<job>`` runner and logging."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable


def setup_logging(logger: logging.Logger, quiet: bool) -> None:
    """Timestamped log lines on stderr (unless the caller configured logging); INFO, or WARNING when quiet."""
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def run_standalone(prog: str, description: str, configure: Callable[[argparse.ArgumentParser], None],
                   argv: list[str] | None = None) -> int:
    """Build the job's parser with ``configure`` (which sets ``func``), parse ``argv``, run; the exit code."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    configure(parser)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
