"""Checks of parquet input files before a job reads them: footers and required columns, no data read.

``check_parquet_file`` opens a file's footer (``pyarrow.parquet.ParquetFile``: the last 8 bytes, then
the footer's metadata; no data page is read) and compares its arrow schema with the required columns.
That catches garbage bytes, a truncated file (no ``PAR1`` magic at the end), an empty file, a missing
column and a column of the wrong type, in milliseconds per file.

A bad data page behind a valid footer is only found by decoding the pages:
``find_unreadable_file`` does that (streams every row group of the given columns) and is meant for the
error path, to name the file behind a failed read.

Column kinds: ``"integer"`` (any int type), ``"number"`` (int or float), ``"integer_list"``
(list / large_list / fixed_size_list of int), ``"number_list"`` (a list of int or float),
``"integer_list_list"`` (a list of lists of int), ``"any"`` (present, any type).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.types as pat

from twotower.data.errors import DataFormatError
from twotower import storage


@dataclass(frozen=True)
class BadParquetFile:
    """A parquet input that cannot be used: ``path`` and a one-line ``reason``."""

    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


_KIND_WORDS = {"number_list": "a list of numbers", "integer_list_list": "a list of integer lists"}


def _is_list(dtype: pa.DataType) -> bool:
    return pat.is_list(dtype) or pat.is_large_list(dtype) or pat.is_fixed_size_list(dtype)


def _kind_ok(kind: str, dtype: pa.DataType) -> bool:
    if kind == "integer":
        return pat.is_integer(dtype)
    if kind == "number":
        return pat.is_integer(dtype) or pat.is_floating(dtype)
    if kind in ("integer_list", "number_list", "integer_list_list"):
        return _is_list(dtype) and _kind_ok(kind.rsplit("_", 1)[0], dtype.value_type)
    if kind == "any":
        return True
    raise ValueError(f"unknown column kind {kind!r}")


def read_footer(path: str) -> tuple[pq.FileMetaData | None, str | None]:
    """The footer of one parquet file (local path or URI): ``(metadata, None)``, or ``(None, reason)``
    when it is not a readable parquet file (garbage, truncated, empty). Reads only the footer."""
    try:
        fs, inner = storage.resolve(path)
        with fs.open_input_file(inner) as f:
            return pq.ParquetFile(f).metadata, None
    except (OSError, pa.ArrowException) as e:
        return None, f"not a readable parquet file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def column_problem(schema: pa.Schema, required: Mapping[str, str]) -> str | None:
    """The first required column (name -> kind, see the module docstring) that ``schema`` lacks or
    holds with another type, as a one-line reason; None when all are there."""
    for name, kind in required.items():
        idx = schema.get_field_index(name)
        if idx < 0:
            return f"missing column {name!r} (has {', '.join(schema.names) or 'no columns'})"
        dtype = schema.field(idx).type
        if not _kind_ok(kind, dtype):
            return f"column {name!r} has type {dtype}, expected {_KIND_WORDS.get(kind, kind.replace('_', ' '))}"
    return None


def check_parquet_file(path: str, required: Mapping[str, str]) -> tuple[int, str | None]:
    """Footer + schema check of one file (local path or URI): ``(num_rows, None)`` when usable,
    ``(0, reason)`` otherwise.

    ``required`` maps column name -> kind (see the module docstring). Reads only the footer.
    """
    meta, reason = read_footer(path)
    if meta is None:
        return 0, reason
    reason = column_problem(meta.schema.to_arrow_schema(), required)
    return (0, reason) if reason else (meta.num_rows, None)


def check_parquet_files(paths: Iterable[str], required: Mapping[str, str]
                        ) -> tuple[list[str], int, list[BadParquetFile]]:
    """``check_parquet_file`` on every path: (usable paths in order, their total rows, bad files)."""
    good, rows, bad = [], 0, []
    for path in paths:
        n, reason = check_parquet_file(str(path), required)
        if reason is None:
            good.append(str(path))
            rows += n
        else:
            bad.append(BadParquetFile(str(path), reason))
    return good, rows, bad


def raise_for_bad_files(bad: list[BadParquetFile], hint: str = "") -> None:
    """Raise ``DataFormatError`` naming the first bad file (and how many more) when ``bad`` is not empty."""
    if not bad:
        return
    more = f" (and {len(bad) - 1} more bad file(s): {', '.join(b.path for b in bad[1:])})" if len(bad) > 1 else ""
    raise DataFormatError(bad[0].path, f"{bad[0].reason}{more}{hint}")


def find_unreadable_file(paths: Iterable[str], columns: list[str] | None = None) -> BadParquetFile | None:
    """First file whose pages fail to decode (streams every row group of ``columns``), or None.

    Cost: a full read of those columns; use it to explain a failed read, not as a routine check.
    """
    for path in paths:
        try:
            fs, inner = storage.resolve(path)
            for _ in pq.ParquetFile(inner, filesystem=fs).iter_batches(batch_size=65_536, columns=columns):
                pass
        except (OSError, pa.ArrowException) as e:
            first = str(e).splitlines()[0] if str(e) else ""
            return BadParquetFile(str(path), f"corrupt data page ({type(e).__name__}: {first})")
    return None
