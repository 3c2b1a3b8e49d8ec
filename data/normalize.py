"""Raw columns -> the canonical types of the prepare job, each error naming file, column, row and value.

Canonical types: ids ``string`` (integers written in decimal; null or empty is an error), timestamps
``int64`` unix seconds in 0..:data:`MAX_TIMESTAMP`, numbers ``float64`` (null -> NaN), weights ``float32``
(finite, >= 0), categorical values ``string`` (null = unknown), multi-hot values ``list<string>``, text
``string`` (null -> ""), vectors ``fixed_size_list<float32>[dim]`` (null -> zeros). CSV columns arrive as
text (:mod:`twotower.data.raw`) and are converted here; parquet columns must already hold the right kind
of value (a string column for a number is converted, and refused at the first value that is not one).

The row filter of ``interactions.filter`` is a small expression language parsed by :func:`parse_filter`:
comparisons (``==, !=, <, <=, >, >=``) of a column with a literal, ``in`` / ``not in`` a list of
literals, ``is None`` / ``is not None``, combined with ``and``, ``or``, ``not`` and parentheses.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from twotower.data.errors import DataFormatError

MAX_TIMESTAMP = 253_402_300_799          # 9999-12-31T23:59:59Z
MILLISECONDS_ABOVE = 1e11               # auto unit: integer timestamps above this are milliseconds (> year 5138 in s)


@dataclass(frozen=True)
class Rows:
    """Where a batch's rows are: ``path``, the 0-based file rows ``rows`` (int64 (n,)), and how to number
    them: CSV lines (1-based, after a header line when ``header``) or parquet rows (1-based). For a table
    read from several files, ``files`` and ``file_idx`` (int (n,)) give each row's file."""

    path: str
    rows: np.ndarray
    csv: bool = False
    header: bool = True
    files: tuple[str, ...] = ()
    file_idx: np.ndarray | None = None

    def number(self, i: int) -> int:
        return int(self.rows[i]) + 1 + (1 if self.csv and self.header else 0)

    def file(self, i: int) -> str:
        return self.files[int(self.file_idx[i])] if self.file_idx is not None else self.path

    def where(self, i: int) -> str:
        return f"{self.file(i)} {'line' if self.csv else 'row'} {self.number(i)}"

    def error(self, i: int, column: str, message: str, value: object = None) -> DataFormatError:
        return DataFormatError(self.file(i), f"column {column!r}: {message}", self.number(i),
                               None if value is None else str(value), unit="line" if self.csv else "row")


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _column(table: pa.Table, column: str) -> pa.Array:
    col = table[column]
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def ids(table: pa.Table, column: str, at: Rows) -> pa.Array:
    """An id column as non-empty strings; raises DataFormatError at the first null, empty or fractional id."""
    col = _column(table, column)
    if pa.types.is_floating(col.type):
        vals = col.to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(vals) | (vals != np.round(vals))
        if bad.any():
            i = _first(bad)
            raise at.error(i, column, "ids must be integers or strings, got a fractional number", vals[i])
        col = pc.cast(col, pa.int64(), safe=False)
    if not (pa.types.is_integer(col.type) or pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise at.error(0, column, f"ids must be integers or strings, the column holds {col.type}")
    col = pc.cast(col, pa.string())
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), True).to_numpy(zero_copy_only=False)
    if empty.any():
        i = _first(empty)
        raise at.error(i, column, "empty id" if col[i].is_valid else "null id", col[i].as_py())
    return col


def numbers(table: pa.Table, column: str, at: Rows) -> np.ndarray:
    """A numeric column as float64 (null -> NaN); strings are parsed, and the first one that is not a
    number raises DataFormatError."""
    col = _column(table, column)
    if pa.types.is_boolean(col.type) or pa.types.is_integer(col.type) or pa.types.is_floating(col.type) \
            or pa.types.is_decimal(col.type):
        return pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False).astype(np.float64)
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        raise at.error(0, column, f"must hold numbers, the column holds {col.type}")
    values = col.to_pylist()
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if v is None or v.strip() == "":
            continue
        try:
            out[i] = float(v)
        except ValueError:
            raise at.error(i, column, f"non-numeric value {v!r}", v) from None
    return out


def timestamps(table: pa.Table, column: str, unit: str, at: Rows) -> np.ndarray:
    """A timestamp column as int64 unix seconds (``unit``: ``seconds`` / ``milliseconds`` for numbers;
    arrow timestamp and date types carry their own; integers stay exact, floats and text are floored).
    Raises DataFormatError at the first null value, or value outside 1970-01-01 .. 9999-12-31."""
    raw = _column(table, column)
    if pa.types.is_timestamp(raw.type) or pa.types.is_date(raw.type):
        col = pc.cast(pc.cast(raw, pa.timestamp("s", tz=getattr(raw.type, "tz", None)), safe=False), pa.int64())
        secs, null = pc.fill_null(col, 0).to_numpy(zero_copy_only=False), pc.is_null(col)
    elif pa.types.is_integer(raw.type):
        secs, null = pc.fill_null(pc.cast(raw, pa.int64()), 0).to_numpy(zero_copy_only=False), pc.is_null(raw)
        secs = secs // 1000 if unit == "milliseconds" else secs
    else:
        values = numbers(table, column, at)
        values = values / 1000.0 if unit == "milliseconds" else values
        null = pa.array(np.isnan(values))
        secs = np.floor(np.where(np.isfinite(values) & (np.abs(values) <= MAX_TIMESTAMP), values, -1)).astype(np.int64)
    bad = null.to_numpy(zero_copy_only=False) | (secs < 0) | (secs > MAX_TIMESTAMP)
    if bad.any():
        i = _first(bad)
        value = raw[i].as_py()
        why = "null timestamp" if value is None else \
            f"timestamp {value!r} is out of range ({unit}: 1970-01-01 .. 9999-12-31, 0 .. {MAX_TIMESTAMP} s)"
        raise at.error(i, column, why, value)
    return secs.astype(np.int64)


def detect_unit(table: pa.Table, column: str, at: Rows) -> str:
    """``milliseconds`` when the column's numbers exceed 1e11, else ``seconds`` (arrow timestamps: ``seconds``)."""
    col = _column(table, column)
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        return "seconds"
    values = numbers(table, column, at)
    finite = values[np.isfinite(values)]
    return "milliseconds" if len(finite) and float(np.median(finite)) > MILLISECONDS_ABOVE else "seconds"


def weights(table: pa.Table, column: str, at: Rows) -> np.ndarray:
    """A sample-weight column as float32; raises DataFormatError at the first null, negative or infinite weight."""
    w = numbers(table, column, at)
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        i = _first(bad)
        raise at.error(i, column, "weights must be finite numbers >= 0", _column(table, column)[i].as_py())
    return w.astype(np.float32)


def categories(table: pa.Table, column: str) -> pa.Array:
    """Categorical raw values as strings (integers in decimal, integral floats without ``.0``; null = unknown)."""
    col = _column(table, column)
    if pa.types.is_floating(col.type):
        vals = col.to_numpy(zero_copy_only=False)
        if np.all(~np.isfinite(vals) | (vals == np.round(vals))):
            col = pc.cast(col, pa.int64(), safe=False).to_numpy(zero_copy_only=False)
            col = pa.array(col, pa.int64(), mask=~np.isfinite(vals))
    col = pc.cast(col, pa.string())
    return pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)


def value_lists(table: pa.Table, column: str, separator: str | None, at: Rows) -> pa.Array:
    """A multi-hot column as list<string> (null -> empty); a string column is split on ``separator``."""
    col = _column(table, column)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        if separator is None:
            raise at.error(0, column, "is a string column; give the multi_hot feature a separator "
                                      "(e.g. separator: '|') or store a list column")
        col = pc.split_pattern(pc.fill_null(col, ""), separator)
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        raise at.error(0, column, f"multi_hot features need a list column or a separated string, got {col.type}")
    flat = pc.list_flatten(col)
    flat = categories(pa.table({"v": flat}), "v")
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
    out = pa.ListArray.from_arrays(pa.array(np.r_[0, np.cumsum(lengths)].astype(np.int32)), flat)
    return _drop_empty(out)


def _drop_empty(lists: pa.Array) -> pa.Array:
    """Remove null / empty strings inside each list (``"a||b"`` split gives an empty value)."""
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(lists)
    keep = pc.fill_null(pc.not_equal(flat, ""), False).to_numpy(zero_copy_only=False)
    row = np.repeat(np.arange(len(lengths)), lengths)
    new_len = np.bincount(row[keep], minlength=len(lengths))
    return pa.ListArray.from_arrays(pa.array(np.r_[0, np.cumsum(new_len)].astype(np.int32)), flat.filter(pa.array(keep)))


def texts(table: pa.Table, column: str) -> list[str]:
    """A text column as Python strings (null -> "")."""
    return ["" if v is None else str(v) for v in _column(table, column).to_pylist()]


def vectors(table: pa.Table, column: str, dim: int, at: Rows) -> np.ndarray:
    """A vector column as float32 (n, dim) (null rows -> zeros); raises DataFormatError at the first row
    whose length is not ``dim`` or that holds a non-finite value."""
    col = _column(table, column)
    if pa.types.is_fixed_size_list(col.type):
        col = pc.cast(col, pa.list_(col.type.value_type))
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)) or \
            not (pa.types.is_floating(col.type.value_type) or pa.types.is_integer(col.type.value_type)):
        raise at.error(0, column, f"vector features need a list of numbers per row, the column holds {col.type}")
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
    bad = valid & (lengths != dim)
    if bad.any():
        i = _first(bad)
        raise at.error(i, column, f"has {lengths[i]} values, expected dim {dim}", f"<{lengths[i]} values>")
    out = np.zeros((len(col), dim), np.float32)
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32)
    out[valid] = flat.reshape(-1, dim)
    bad = valid & ~np.isfinite(out).all(axis=1)
    if bad.any():
        i = _first(bad)
        raise at.error(i, column, "holds a non-finite value", out[i][~np.isfinite(out[i])][0])
    return out


# ---- the row filter ------------------------------------------------------------------------------------

_OPS = {ast.Eq: "equal", ast.NotEq: "not_equal", ast.Lt: "less", ast.LtE: "less_equal", ast.Gt: "greater",
        ast.GtE: "greater_equal"}


def parse_filter(text: str, columns: list[str]) -> tuple[pc.Expression, dict[str, str]]:
    """(pyarrow expression, {column it reads: "number" / "string" / "bool" / "any"}) of a filter string
    (module docstring).

    Raises:
        ValueError: not an expression of that language, or a column not among ``columns``; the message
            quotes the part that is wrong.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"cannot parse {text!r}: {e.msg}") from None
    used: dict[str, str] = {}
    return _expr(tree, columns, used, text), used


def _literal(node: ast.AST, text: str):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return -node.operand.value
    raise ValueError(f"{ast.unparse(node)!r} in {text!r} is not a literal (a number, a quoted string, True/False)")


def _field(name: str, literal, used: dict[str, str]) -> pc.Expression:
    """The column as the literal's type (CSV columns are text: compared as numbers when the literal is one)."""
    if isinstance(literal, bool):
        used[name] = "bool"
        return pc.field(name).cast(pa.bool_())
    if isinstance(literal, (int, float)):
        used[name] = "number"
        return pc.field(name).cast(pa.float64())
    used[name] = "string"
    return pc.field(name).cast(pa.string())


def _expr(node: ast.AST, columns: list[str], used: dict[str, str], text: str) -> pc.Expression:
    if isinstance(node, ast.BoolOp):
        parts = [_expr(v, columns, used, text) for v in node.values]
        out = parts[0]
        for p in parts[1:]:
            out = (out & p) if isinstance(node.op, ast.And) else (out | p)
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ~_expr(node.operand, columns, used, text)
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.left, ast.Name):
        name, op, right = node.left.id, node.ops[0], node.comparators[0]
        if name not in columns:
            raise ValueError(f"unknown column {name!r} in {text!r}; the files have {columns}")
        used.setdefault(name, "any")
        if isinstance(op, (ast.Is, ast.IsNot)) and isinstance(right, ast.Constant) and right.value is None:
            null = pc.field(name).is_null()
            return null if isinstance(op, ast.Is) else ~null
        if isinstance(op, (ast.In, ast.NotIn)) and isinstance(right, (ast.List, ast.Tuple, ast.Set)):
            values = [_literal(v, text) for v in right.elts]
            if not values:
                raise ValueError(f"empty list in {text!r}")
            inside = _field(name, values[0], used).isin(values)
            return inside if isinstance(op, ast.In) else ~inside
        if type(op) in _OPS:
            literal = _literal(right, text)
            return getattr(pc, _OPS[type(op)])(_field(name, literal, used), literal)
    raise ValueError(f"{ast.unparse(node)!r} in {text!r} is not supported: write comparisons of a column with "
                     f"a literal (rating >= 4, event == 'buy', kind in ['a', 'b'], x is not None) joined by "
                     f"and / or / not")


def apply_filter(table: pa.Table, expr: pc.Expression, used: dict[str, str], text: str, at: Rows) -> np.ndarray:
    """Boolean mask (n,) of the rows the filter keeps (null -> dropped). A value that cannot be compared
    (e.g. text in a column compared with a number) raises DataFormatError naming its row and value."""
    try:
        mask = pads.dataset(table).to_table(columns={"keep": expr})["keep"]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        for column, kind in used.items():
            if kind == "number":
                numbers(table, column, at)            # raises at the first value that is not a number
        raise DataFormatError(at.path, f"filter {text!r} cannot be evaluated: {e}") from None
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
