"""Readers for the original GroupLens MovieLens file layouts (plain or gzipped files).

=================  ==========================  =============  =======================
variant            ratings                     users          items
=================  ==========================  =============  =======================
ml-100k            ``u.data`` (tab)            ``u.user``     ``u.item`` (``|``, 19 flags)
ml-1m              ``ratings.dat`` (``::``)    ``users.dat``  ``movies.dat``
ml-10m             ``ratings.dat`` (``::``)    none           ``movies.dat``
ml-20m, ml-25m,    ``ratings.csv`` (header)    none           ``movies.csv``
ml-latest-small
=================  ==========================  =============  =======================

Every file may also be given as ``NAME.gz``. Text files are decoded as UTF-8, falling back to
latin-1 (ML-100K ``u.item`` and ML-1M ``movies.dat`` are latin-1). Ratings are parsed with
pyarrow in blocks (``::`` is first replaced by a tab), and on any problem the failing block is
re-scanned line by line so that the :class:`DataFormatError` names the exact line and value.
"""
from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from twotower.data.errors import DataFormatError
from twotower.data.features import AGE_CODES, age_bucket, title_year

VARIANTS = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest-small")
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")
_RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
_RATING_WHAT = ("user id", "item id", "rating", "timestamp")


@dataclass(frozen=True)
class Layout:
    """File names and formats of one MovieLens variant."""

    ratings: str
    sep: str
    header: bool
    users: str | None
    items: str


LAYOUTS = {
    "ml-100k": Layout("u.data", "\t", False, "u.user", "u.item"),
    "ml-1m": Layout("ratings.dat", "::", False, "users.dat", "movies.dat"),
    "ml-10m": Layout("ratings.dat", "::", False, None, "movies.dat"),
    "ml-20m": Layout("ratings.csv", ",", True, None, "movies.csv"),
    "ml-25m": Layout("ratings.csv", ",", True, None, "movies.csv"),
    "ml-latest-small": Layout("ratings.csv", ",", True, None, "movies.csv"),
}


@dataclass
class MovieLensData:
    """Raw MovieLens tables, in file order.

    Attributes:
        variant: e.g. ``ml-1m``.
        ratings: columns ``user_id`` int64, ``item_id`` int64, ``rating`` float32, ``timestamp`` int64.
        users: ``user_id`` int64, ``gender`` str, ``age_bucket`` int32 (ML-1M age code),
            ``occupation`` str, ``zip_prefix`` str (first 3 characters); None when the variant has
            no users file.
        items: ``item_id`` int64, ``title`` str (as in the file, year included), ``year`` int64
            (0 = unknown), ``genres`` (list of genre names).
    """

    variant: str
    ratings: pd.DataFrame
    users: pd.DataFrame | None
    items: pd.DataFrame


def resolve(src: str | Path, name: str) -> Path:
    """``src/name`` or ``src/name.gz``, whichever exists; raises DataFormatError if neither."""
    p = Path(src) / name
    for cand in (p, p.with_name(name + ".gz")):
        if cand.is_file():
            return cand
    raise DataFormatError(p, f"file not found (also looked for {name}.gz)")


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_text(path: Path) -> str:
    with _open(path) as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _check_int(path, line_no, what, value) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataFormatError(path, f"{what} {value!r} is not an integer", line_no, value) from None


def _scan_ratings(path: Path, block: bytes, sep: str, lines_before: int) -> None:
    """Re-check a block of rating lines in Python; raises DataFormatError at the first bad line."""
    for i, line in enumerate(block.decode("latin-1").split("\n")):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        n = lines_before + i + 1
        fields = line.split(sep)
        if len(fields) != 4:
            raise DataFormatError(path, f"expected 4 fields separated by {sep!r}, got {len(fields)} "
                                        f"(wrong separator?): {line[:80]!r}", n, line)
        for what, value in zip(_RATING_WHAT, fields):
            if what == "rating":
                try:
                    float(value)
                except ValueError:
                    raise DataFormatError(path, f"rating {value!r} is not a number", n, value) from None
                continue
            v = _check_int(path, n, what, value)
            if what == "timestamp" and v < 0:
                raise DataFormatError(path, f"timestamp {value!r} is negative", n, value)


def _parse_block(path: Path, block: bytes, sep: str, lines_before: int) -> pa.Table:
    data = block.replace(b"::", b"\t") if sep == "::" else block
    try:
        table = pacsv.read_csv(
            pa.py_buffer(data),
            read_options=pacsv.ReadOptions(column_names=list(_RATING_COLUMNS)),
            parse_options=pacsv.ParseOptions(delimiter="\t" if sep == "::" else sep),
            convert_options=pacsv.ConvertOptions(column_types={
                "user_id": pa.int64(), "item_id": pa.int64(), "rating": pa.float32(),
                "timestamp": pa.int64()}))
    except pa.ArrowInvalid as e:
        _scan_ratings(path, block, sep, lines_before)
        raise DataFormatError(path, f"could not parse ratings: {e}") from e
    bad = any(col.null_count for col in table.columns)
    if bad or (table.num_rows and pc.min(table["timestamp"]).as_py() < 0):
        _scan_ratings(path, block, sep, lines_before)
        raise DataFormatError(path, "ratings contain empty or negative values")
    return table


def iter_rating_blocks(path: str | Path, sep: str, header: bool = False,
                       block_bytes: int = 64 << 20) -> Iterator[pa.Table]:
    """Stream a ratings file ``user, item, rating, timestamp`` (4 fields separated by ``sep``) as pyarrow
    tables of about ``block_bytes`` of text each (``user_id`` int64, ``item_id`` int64, ``rating`` float32,
    ``timestamp`` int64, file order), so a big file (ML-25M) is never held whole.

    Raises:
        DataFormatError: missing or empty file, wrong field count (wrong separator), non-integer
            id or timestamp, non-numeric rating, negative timestamp (with line number and value).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    lines, rows = 0, 0
    with _open(path) as f:
        if header:
            head = f.readline().decode("latin-1").strip()
            lines = 1
            if head and len(head.split(sep)) != 4:
                raise DataFormatError(path, f"header should have 4 fields separated by {sep!r}: "
                                            f"{head[:80]!r}", 1, head)
        while block := f.read(block_bytes):
            if not block.endswith(b"\n"):
                block += f.readline()
            if block.strip():
                table = _parse_block(path, block, sep, lines)
                rows += table.num_rows
                yield table
            lines += block.count(b"\n")
    if rows == 0:
        raise DataFormatError(path, "file is empty (no rating rows)")


def read_ratings(path: str | Path, sep: str, header: bool = False,
                 block_bytes: int = 64 << 20) -> pd.DataFrame:
    """All of :func:`iter_rating_blocks` as one DataFrame (small files and tests)."""
    table = pa.concat_tables(list(iter_rating_blocks(path, sep, header, block_bytes)))
    return pd.DataFrame({c: table[c].to_numpy() for c in _RATING_COLUMNS})


def _split_lines(path: Path, text: str, sep: str, nfields: int):
    """Yield (line number, fields) of the non-blank lines, checking the field count."""
    for i, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) != nfields:
            raise DataFormatError(path, f"expected {nfields} fields separated by {sep!r}, got "
                                        f"{len(fields)} (wrong separator?): {line[:80]!r}", i, line)
        yield i, fields


def _users_frame(path: Path, rows: list[tuple]) -> pd.DataFrame:
    if not rows:
        raise DataFormatError(path, "file is empty (no user rows)")
    df = pd.DataFrame(rows, columns=["user_id", "gender", "age_bucket", "occupation", "zip_prefix"])
    df["user_id"] = df["user_id"].astype(np.int64)
    df["age_bucket"] = df["age_bucket"].astype(np.int32)
    dup = df["user_id"].duplicated()
    if dup.any():
        raise DataFormatError(path, f"duplicate user id {df['user_id'][dup].iloc[0]}")
    return df


def read_users(path: str | Path, variant: str) -> pd.DataFrame:
    """Read ``u.user`` (ML-100K, ``id|age|gender|occupation|zip``, raw ages bucketed with
    :func:`age_bucket`) or ``users.dat`` (ML-1M, ``id::gender::age code::occupation code::zip``).
    Returns the ``users`` frame described in :class:`MovieLensData`; raises DataFormatError."""
    path = Path(path)
    text, rows = _read_text(path), []
    if variant == "ml-100k":
        for n, (uid, age, gender, occ, zipc) in _split_lines(path, text, "|", 5):
            a = _check_int(path, n, "age", age)
            rows.append((_check_int(path, n, "user id", uid), gender.strip(),
                         int(age_bucket(np.array([a]))[0]), occ.strip(), zipc.strip()[:3]))
    else:
        for n, (uid, gender, age, occ, zipc) in _split_lines(path, text, "::", 5):
            a = _check_int(path, n, "age code", age)
            if a not in AGE_CODES:
                raise DataFormatError(path, f"age code {age!r} is not one of {AGE_CODES}", n, age)
            _check_int(path, n, "occupation code", occ)
            rows.append((_check_int(path, n, "user id", uid), gender.strip(), a, occ.strip(),
                         zipc.strip()[:3]))
    return _users_frame(path, rows)


def read_items(path: str | Path, variant: str) -> pd.DataFrame:
    """Read ``u.item`` (ML-100K), ``movies.dat`` (``id::title::a|b``) or ``movies.csv``
    (``movieId,title,genres`` with a header, RFC-4180 quoting). ``(no genres listed)`` gives no
    genre. Returns the ``items`` frame of :class:`MovieLensData`; raises DataFormatError."""
    path = Path(path)
    text, rows = _read_text(path), []
    if variant == "ml-100k":
        for n, f in _split_lines(path, text, "|", 5 + len(ML100K_GENRES)):
            date = f[2].strip()
            year = int(date[-4:]) if date[-4:].isdigit() else title_year(f[1])
            genres = [g for g, flag in zip(ML100K_GENRES, f[5:]) if flag.strip() == "1"]
            rows.append((_check_int(path, n, "item id", f[0]), f[1], year, genres))
    elif path.name.startswith("movies.csv"):
        reader = csv.reader(io.StringIO(text))
        for n, f in enumerate(reader, start=1):
            if n == 1 or not f:
                continue
            if len(f) != 3:
                raise DataFormatError(path, f"expected 3 comma-separated fields, got {len(f)}", n,
                                      ",".join(f))
            rows.append((_check_int(path, n, "item id", f[0]), f[1], title_year(f[1]), f[2]))
    else:
        for n, line in enumerate(text.split("\n"), start=1):
            line = line.rstrip("\r")
            if not line.strip():
                continue
            if line.count("::") < 2:
                raise DataFormatError(path, f"expected 'id::title::genres' (wrong separator?): "
                                            f"{line[:80]!r}", n, line)
            iid, rest = line.split("::", 1)
            title, genres = rest.rsplit("::", 1)
            rows.append((_check_int(path, n, "item id", iid), title, title_year(title), genres))
    if not rows:
        raise DataFormatError(path, "file is empty (no item rows)")
    df = pd.DataFrame(rows, columns=["item_id", "title", "year", "genres"])
    df["item_id"] = df["item_id"].astype(np.int64)
    df["year"] = df["year"].astype(np.int64)
    if variant != "ml-100k":
        df["genres"] = [[g for g in s.split("|") if g and g != "(no genres listed)"]
                        for s in df["genres"]]
    dup = df["item_id"].duplicated()
    if dup.any():
        raise DataFormatError(path, f"duplicate item id {df['item_id'][dup].iloc[0]}")
    return df


def read_movielens(src: str | Path, variant: str) -> MovieLensData:
    """Read all files of ``variant`` from directory ``src`` (layouts in the module docstring).

    Raises:
        ValueError: unknown variant. DataFormatError: any missing, empty or malformed file.
    """
    if variant not in LAYOUTS:
        raise ValueError(f"unknown MovieLens variant {variant!r}; known: {', '.join(VARIANTS)}")
    lay = LAYOUTS[variant]
    if not Path(src).is_dir():
        raise DataFormatError(src, "MovieLens directory not found")
    ratings = read_ratings(resolve(src, lay.ratings), lay.sep, lay.header)
    users = read_users(resolve(src, lay.users), variant) if lay.users else None
    items = read_items(resolve(src, lay.items), variant)
    return MovieLensData(variant, ratings, users, items)
