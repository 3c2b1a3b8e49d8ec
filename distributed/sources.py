"""The sources of the one preparation path: a spec file, MovieLens, the synthetic generator.

Each writes (or names) raw tables plus a :class:`~twotower.data.spec.DatasetSpec` and runs the same
Ray Data job, :func:`twotower.distributed.prepare.prepare_dataset`. MovieLens and synthetic tables are
written to a temporary sibling of ``out`` (same filesystem or bucket, so every node of a cluster reads
them with a URI ``out``) and removed afterwards.
"""
from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from twotower import storage
from twotower.data.errors import DataFormatError
from twotower.data.locate import find_movielens
from twotower.data.movielens_tables import write_movielens_tables
from twotower.data.spec import SplitSpec, load_spec
from twotower.data.synthetic import write_synthetic_tables
from twotower.distributed.prepare import prepare_dataset


@contextlib.contextmanager
def _source_dir(out: str) -> Iterator[str]:
    """A fresh sibling directory of ``out`` for a source's raw tables, removed afterwards."""
    path = storage.staging_dir(out)
    try:
        yield path
    finally:
        storage.delete_dir(path)


def _check_out(out: str, overwrite: bool) -> None:
    if storage.is_nonempty(out) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; use overwrite=True (--overwrite) to replace it")


def _split(split: str, valid_fraction: float, test_fraction: float) -> SplitSpec:
    return SplitSpec(method=split, valid_fraction=valid_fraction, test_fraction=test_fraction)


def prepare_table(spec_path: str | Path, out: str | Path, *, overwrite: bool = False) -> dict:
    """``twotower prepare table``: the YAML spec at ``spec_path`` -> a prepared dataset at ``out``.

    Raises:
        SpecError: a bad spec (names the key). DataFormatError, FileExistsError: see ``prepare_dataset``.
    """
    _check_out(str(out), overwrite)
    return prepare_dataset(load_spec(spec_path), str(out), overwrite=overwrite, source=str(spec_path))


def prepare_movielens(out: str | Path, variant: str = "ml-100k", *, src: str | Path | None = None,
                      data_dir: str | Path | None = None, overwrite: bool = False, min_rating: float | None = None,
                      split: str = "leave_last_out", valid_fraction: float = 0.1, test_fraction: float = 0.1,
                      history_length: int = 50, block_rows: int = 2_000_000) -> dict:
    """Read MovieLens ``variant`` and prepare it at ``out`` (see :mod:`twotower.data.movielens_tables`).

    Args:
        src: folder (local or URI; a URI is copied to a local temporary folder first) holding the raw files;
            default :func:`~twotower.data.locate.find_movielens` (``data_dir``, $TWOTOWER_DATA_DIR, ../shared/data).
        min_rating: keep ratings >= this (default: every rating is an implicit positive).
    Returns the stats dict written to ``stats.json``.

    Raises:
        FileExistsError: ``out`` non-empty without ``overwrite`` (checked before reading).
        DataFormatError: missing/empty/malformed raw files. FileNotFoundError: data not found.
    """
    out = str(out)
    _check_out(out, overwrite)
    fetched = storage.local_copy(src) if src is not None and storage.is_uri(src) else None
    folder = fetched[0] if fetched else Path(src) if src is not None else find_movielens(variant, data_dir)
    try:
        with _source_dir(out) as tables:
            try:
                spec = write_movielens_tables(folder, variant, tables, min_rating=min_rating,
                                              history_length=history_length,
                                              split=_split(split, valid_fraction, test_fraction), block_rows=block_rows)
            except DataFormatError as e:        # name the file under the URI, not under the temporary copy
                if not fetched:
                    raise
                raise DataFormatError(e.path.replace(str(folder), str(src).rstrip("/")), e.message, e.line,
                                      e.value, e.unit) from e
            return prepare_dataset(spec, out, overwrite=overwrite, source=str(src or folder),
                                   extra_stats={"variant": variant, "min_rating": min_rating})
    finally:
        if fetched and fetched[1]:
            shutil.rmtree(folder, ignore_errors=True)


def prepare_synthetic(out: str | Path, users: int = 10_000, items: int = 2_000, interactions: int = 200_000,
                      seed: int = 0, history_length: int = 50, *, split: str = "leave_last_out",
                      valid_fraction: float = 0.1, test_fraction: float = 0.1, overwrite: bool = False,
                      block_rows: int = 2_000_000, **world) -> dict:
    """Generate a synthetic dataset with planted structure (:mod:`twotower.data.synthetic`) and prepare it
    at ``out``; ``world``: the generator's other parameters (clusters, windows, in_cluster, ...,
    chunk_users). Returns the stats dict (with ``"synthetic"``: the parameters).

    Raises:
        ValueError: bad sizes. FileExistsError: ``out`` non-empty without ``overwrite``.
    """
    out = str(out)
    _check_out(out, overwrite)
    with _source_dir(out) as tables:
        spec, params = write_synthetic_tables(tables, users, items, interactions, seed, history_length,
                                              split=_split(split, valid_fraction, test_fraction),
                                              block_rows=block_rows, **world)
        truth = {name: storage.join(tables, name) for name in params["truth_files"]}
        return prepare_dataset(spec, out, overwrite=overwrite, source="synthetic",
                               extra_stats={"synthetic": params}, extra_files=truth)
