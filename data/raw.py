"""Reading a team's raw tables (parquet or CSV, local or URI), in bounded batches, with row numbers.

The prepare job (:mod:`twotower.distributed.prepare`) reads every interaction file in its own task,
batch by batch, through :func:`iter_batches`, which adds ``_file`` (the file's position in the sorted
file list) and ``_row`` (the 0-based row in the file): the job sorts a user's interactions by
(timestamp, ``_file``, ``_row``), i.e. by time and then the order of the raw rows, and every error
names the file, the column, the row and the value (:mod:`twotower.data.normalize`).
"""
from __future__ import annotations

import fnmatch
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from twotower import storage
from twotower.data.errors import DataFormatError
from twotower.data.spec import Source

READ_BATCH_ROWS = 65_536
CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".inter", ".user", ".item")


def file_format(path: str, source: Source) -> str:
    """``parquet`` or ``csv``: the source's ``format``, else from the extension (``.csv``/``.tsv``/... -> csv)."""
    if source.format:
        return source.format
    return "csv" if path.lower().endswith(CSV_SUFFIXES) else "parquet"


def expand(source: Source, key: str) -> list[str]:
    """Every file of a source (``path`` entries: files, directories recursively, globs), sorted, deduplicated.

    Hidden files and ``_SUCCESS``-style markers (names starting with ``.`` or ``_``) are skipped in
    directories. Raises DataFormatError naming the ``path`` entry that matches no file (``key``: the spec
    key, e.g. ``interactions.path``).
    """
    out: list[str] = []
    for entry in source.paths:
        fs, inner = storage.resolve(entry)
        prefix = entry[:len(entry) - len(inner)] if storage.is_uri(entry) else ""
        if any(ch in inner for ch in "*?["):
            base = inner[:min(inner.index(ch) for ch in "*?[" if ch in inner)].rsplit("/", 1)[0] or "/"
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
            found = [i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, inner)]
        else:
            info = fs.get_file_info(inner)
            if info.type == pafs.FileType.File:
                found = [inner]
            elif info.type == pafs.FileType.Directory:
                infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
                found = [i.path for i in infos if i.type == pafs.FileType.File and
                         not i.base_name.startswith((".", "_"))]
            else:
                found = []
        if not found:
            raise DataFormatError(entry, f"no file matches ({key})")
        out += [prefix + f if prefix and not f.startswith(prefix) else f for f in found]
    return sorted(set(out))


def _csv_options(source: Source, columns: list[str] | None, batch_bytes: int):
    o = source.csv
    read = pacsv.ReadOptions(block_size=batch_bytes, column_names=o.column_names if not o.header else None,
                             skip_rows=1 if o.header and o.column_names else 0)
    parse = pacsv.ParseOptions(delimiter=o.delimiter)
    convert = pacsv.ConvertOptions(include_columns=columns, strings_can_be_null=True,   # every CSV value is read
                                   column_types={c: pa.string() for c in columns or ()})  # as text: checked later
    return read, parse, convert


def file_columns(path: str, source: Source) -> list[str]:
    """The column names of one file (parquet footer, or the CSV header / ``column_names``)."""
    fs, inner = storage.resolve(path)
    try:
        if file_format(path, source) == "parquet":
            return list(pq.read_schema(inner, filesystem=fs).names)
        if source.csv.column_names:
            return list(source.csv.column_names)
        with fs.open_input_stream(inner, compression="detect") as f:
            reader = pacsv.open_csv(f, *_csv_options(source, None, 1 << 16)[:2])
            return list(reader.schema.names)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataFormatError(path, f"cannot read the file as {file_format(path, source)}: {e}") from None


def check_columns(path: str, source: Source, needed: dict[str, str]) -> None:
    """Raise DataFormatError naming the file, the missing column and the spec key that names it.

    ``needed``: column -> spec key (e.g. ``{"customer_id": "interactions.user_id"}``).
    """
    have = file_columns(path, source)
    for column, key in needed.items():
        if column not in have:
            raise DataFormatError(path, f"no column {column!r} (named by {key}); the file has {have}")


def iter_batches(path: str, source: Source, columns: list[str], batch_rows: int = READ_BATCH_ROWS
                 ) -> Iterator[tuple[int, pa.Table]]:
    """(first row number, table of ``columns``) for consecutive batches of one file, at most ``batch_rows``
    rows each (CSV: about that many; blocks of ``batch_rows * 64`` bytes). Raises DataFormatError for an
    unreadable file (message from pyarrow, with the file name)."""
    fs, inner = storage.resolve(path)
    row = 0
    try:
        if file_format(path, source) == "parquet":
            pf = pq.ParquetFile(inner, filesystem=fs)
            for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
                yield row, pa.Table.from_batches([batch])
                row += batch.num_rows
            return
        with fs.open_input_stream(inner, compression="detect") as f:
            reader = pacsv.open_csv(f, *_csv_options(source, columns, batch_rows * 64))
            for batch in reader:
                yield row, pa.Table.from_batches([batch])
                row += batch.num_rows
    except (pa.ArrowInvalid, OSError) as e:
        raise DataFormatError(path, f"cannot read the file as {file_format(path, source)} (near row {row + 1}): "
                                    f"{e}") from None


def estimate_rows(paths: list[str], source: Source) -> int:
    """Rows of the files: parquet footers exactly; CSV from the size and the first 1 MiB's line count."""
    total = 0
    for path in paths:
        fs, inner = storage.resolve(path)
        if file_format(path, source) == "parquet":
            total += pq.ParquetFile(inner, filesystem=fs).metadata.num_rows
            continue
        size = fs.get_file_info(inner).size or 0
        with fs.open_input_stream(inner, compression="detect") as f:
            head = f.read(1 << 20)
        lines = max(head.count(b"\n"), 1)
        total += int(size / max(len(head), 1) * lines) if len(head) >= (1 << 20) else lines
    return total


def read_whole(paths: list[str], source: Source, columns: list[str]) -> pa.Table:
    """Every row of ``columns`` of the files (users / items tables, read on the driver), with ``_file``
    (position in ``paths``) and ``_row`` columns for error messages."""
    parts = []
    for k, path in enumerate(paths):
        for row0, table in iter_batches(path, source, columns):
            n = table.num_rows
            parts.append(table.append_column("_file", pa.array([k] * n, pa.int32()))
                         .append_column("_row", pa.array(range(row0, row0 + n), pa.int64())))
    if not parts:
        raise DataFormatError(paths[0] if paths else "(no file)", "no rows")
    return pa.concat_tables(parts, promote_options="permissive")
