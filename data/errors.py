"""Errors raised while reading raw interaction files."""
from __future__ import annotations

from pathlib import Path


class DataFormatError(ValueError):
    """An input file (raw interactions, or a prepared parquet file) is missing, empty or malformed.

    The message always names the file and, where one applies, the 1-based line number and the
    offending value, e.g. ``".../u.data line 17: user id 'abc' is not an integer"``.

    Attributes:
        path: the file concerned (as given). message: the problem, without the location.
        line: 1-based line (CSV, text) or row (parquet) number, or None when the problem is not tied
            to one row. value: the offending raw value, or None. unit: ``"line"`` or ``"row"``.
    """

    def __init__(self, path: str | Path, message: str, line: int | None = None,
                 value: str | None = None, unit: str = "line") -> None:
        self.path = str(path)
        self.message = message
        self.line = line
        self.value = value
        self.unit = unit
        where = self.path if line is None else f"{self.path} {unit} {line}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self):               # picklable across Ray tasks with every attribute
        return DataFormatError, (self.path, self.message, self.line, self.value, self.unit)
