"""Writing a prepared dataset directory: atomic output directory, part files, JSON (vocabularies:
:mod:`twotower.data.vocab`).

:func:`atomic_directory` yields a temporary directory next to the output (same filesystem) and
renames it into place only when the ``with`` block succeeds; on any exception the temporary
directory is removed and a pre-existing output is left untouched. A URI output (``s3://...``) is
uploaded from a local temporary directory instead (see its docstring).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from twotower import storage

log = logging.getLogger("twotower.data")
ROW_GROUP_SIZE = 65_536
ROWS_PER_FILE = 250_000


@contextlib.contextmanager
def atomic_directory(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Context manager yielding a fresh local temporary directory that becomes ``out`` on success.

    Local ``out``: the temporary directory is a sibling (same filesystem) renamed into place. URI ``out``
    (``s3://...``): it is a local temporary directory uploaded into ``out`` (a previous ``out`` is
    deleted first when ``overwrite``), with ``schema.json`` uploaded last, so a reader never sees a
    schema.json before the files it describes; object stores have no atomic directory rename.

    Raises:
        FileExistsError: ``out`` exists and is not an empty directory, and ``overwrite`` is False
            (checked before anything is written).
    """
    if storage.is_nonempty(out) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; use overwrite=True "
                              f"(--overwrite) to replace it")
    if storage.is_uri(out) and not str(out).startswith("file://"):
        tmp = Path(tempfile.mkdtemp(prefix="twotower-prepare-"))
        try:
            yield tmp
            storage.delete_dir(out)
            storage.upload_dir(tmp, out, last="schema.json")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    out = Path(storage.resolve(out)[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
        if out.exists() or out.is_symlink():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(old, out)
                raise
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class PartWriter:
    """Appends tables to ``directory/part-00000.parquet``, ``part-00001.parquet`` ... with at most
    ``rows_per_file`` rows per file and row groups of ``row_group_size`` rows (the last group of a
    file may be smaller), zstd-compressed without dictionary encoding. Always leaves at least one
    (possibly empty) file after :meth:`close`.
    """

    def __init__(self, directory: str | Path, schema: pa.Schema,
                 rows_per_file: int = ROWS_PER_FILE, row_group_size: int = ROW_GROUP_SIZE) -> None:
        if rows_per_file < 1 or row_group_size < 1:
            raise ValueError("rows_per_file and row_group_size must be >= 1")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema, self.rows_per_file, self.row_group_size = schema, rows_per_file, row_group_size
        self.files: list[str] = []
        self.rows = 0
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._writer: pq.ParquetWriter | None = None
        self._in_file = 0

    def _next_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
        name = f"part-{len(self.files):05d}.parquet"
        self.files.append(name)
        self._writer = pq.ParquetWriter(self.directory / name, self.schema, compression="zstd",
                                        use_dictionary=False)
        self._in_file = 0

    def _flush(self, final: bool) -> None:
        table = pa.concat_tables(self._buffer) if self._buffer else self.schema.empty_table()
        while table.num_rows >= self.row_group_size or (final and table.num_rows):
            if self._writer is None or self._in_file >= self.rows_per_file:
                self._next_file()
            n = min(self.row_group_size, self.rows_per_file - self._in_file, table.num_rows)
            self._writer.write_table(table.slice(0, n), row_group_size=n)
            self._in_file += n
            self.rows += n
            table = table.slice(n)
        if table.num_rows:  # copy the remainder so the big source chunk can be freed
            table = table.take(pa.array(np.arange(table.num_rows)))
        self._buffer, self._buffered = ([table] if table.num_rows else []), table.num_rows

    def write(self, table: pa.Table) -> None:
        """Append ``table`` (must have this writer's schema)."""
        if table.num_rows == 0:
            return
        self._buffer.append(table.select(self.schema.names).cast(self.schema))
        self._buffered += table.num_rows
        if self._buffered >= self.row_group_size:
            self._flush(final=False)

    def close(self) -> list[str]:
        """Flush and close; returns the file names written (relative to the directory)."""
        self._flush(final=True)
        if self._writer is None:
            self._next_file()
        self._writer.close()
        self._writer = None
        return self.files


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as indented JSON with sorted keys."""
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def list_column(lists: Sequence[Sequence[int]]) -> pa.Array:
    """list<int32> column from Python lists of ints."""
    return pa.array([list(x) for x in lists], pa.list_(pa.int32()))


class SequenceWriter:
    """Writes ``sequences/part-NNNNN.parquet`` (:mod:`twotower.data.sequences`), one file per :meth:`write`
    of complete users, and counts train interactions per item.

    Attributes:
        train_count: int64 (num_items,), train interactions per item index, accumulated over writes.
        rows: interactions written per split.
        files: the file names written (relative to ``sequences/``).
    """

    def __init__(self, out: Path, schema, num_items: int) -> None:
        from twotower.data.sequences import SEQUENCES_DIR, SPLITS

        self.directory = Path(out) / SEQUENCES_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.train_count = np.zeros(num_items, np.int64)
        self.rows = {s: 0 for s in SPLITS}
        self.files: list[str] = []

    def write(self, user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, split: np.ndarray,
              columns: dict | None = None) -> None:
        """Append interactions of complete users sorted by (user, timestamp, raw row order)."""
        from twotower.data.sequences import TRAIN, build_sequence_rows, write_sequence_file

        if len(user) == 0:
            return
        name = f"part-{len(self.files):05d}.parquet"
        rows = build_sequence_rows(user, item, timestamp, split, self.schema, columns)
        counts = write_sequence_file(rows, str(self.directory / name))
        self.files.append(name)
        for k, v in counts.items():
            self.rows[k] += v
        self.train_count += np.bincount(np.asarray(item)[np.asarray(split) == TRAIN], minlength=len(self.train_count))

    def close(self) -> list[str]:
        """The file names written."""
        return list(self.files)
