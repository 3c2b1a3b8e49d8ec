"""MovieLens -> prepared dataset directory (layout: :mod:`twotower.model.schema`).

Every kept rating is an implicit positive (``min_rating`` filters). Users are indexed from the kept
interactions, items from the item file plus any rated item missing from it (the catalogue), both
sorted by numeric id, so index i + 1 is the i-th smallest id. Interactions are held in memory with
compact dtypes; history/seen lists are built and written per chunk of users (``chunk_rows``).
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from twotower.data import features as F
from twotower.data.errors import DataFormatError
from twotower.data.locate import find_movielens
from twotower.data.movielens import MovieLensData, read_movielens
from twotower.data.split import (SPLIT_METHODS, leave_last_out, sort_order, temporal_cuts, temporal_split,
                                 user_chunks)
from twotower.data.vocab import write_vocab
from twotower.data.writer import SequenceWriter, atomic_directory, list_column, write_json
from twotower import storage
from twotower.model.schema import DatasetSchema, Feature

log = logging.getLogger("twotower.data")
USER_FEATURES = ("gender", "age_bucket", "occupation", "zip_prefix")


def _raw(values) -> list[str]:
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append("")
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v))
    return out


def _categorical(out: Path, name: str, raw: list[str]) -> tuple[np.ndarray, Feature]:
    vocab = F.build_vocab(raw)
    write_vocab(out, name, vocab)
    codes = np.r_[np.int32(0), F.encode(raw, vocab)].astype(np.int32)
    return codes, Feature(name, "categorical", cardinality=max(2, len(vocab) + 1))


def _user_table(out: Path, users: pd.DataFrame | None, users_raw: np.ndarray):
    cols = {"user_idx": pa.array(np.arange(len(users_raw) + 1, dtype=np.int32)),
            "user_id": pa.array([""] + [str(u) for u in users_raw], pa.string())}
    feats = []
    if users is not None:
        aligned = users.set_index("user_id").reindex(users_raw)
        for name in USER_FEATURES:
            codes, feat = _categorical(out, name, _raw(aligned[name].tolist()))
            cols[name] = pa.array(codes)
            feats.append(feat)
    return pa.table(cols), tuple(feats)


def _item_table(out: Path, items: pd.DataFrame, items_raw: np.ndarray, train_count: np.ndarray):
    aligned = items.set_index("item_id").reindex(items_raw)
    titles = ["" if not isinstance(t, str) else t for t in aligned["title"]]
    years = aligned["year"].fillna(0).astype(np.int64).tolist()
    genres = [g if isinstance(g, list) else [] for g in aligned["genres"]]
    genre_vocab = F.build_vocab(g for gs in genres for g in gs)
    write_vocab(out, "genres", genre_vocab)
    genre_idx = [[]] + F.encode_lists(genres, genre_vocab)
    year_codes, year_feat = _categorical(out, "year_bucket", [F.year_bucket_raw(y) for y in years])
    tokens = [[]] + [F.title_tokens(t) for t in titles]
    table = pa.table({
        "item_idx": pa.array(np.arange(len(items_raw) + 1, dtype=np.int32)),
        "item_id": pa.array([""] + [str(i) for i in items_raw], pa.string()),
        "title": pa.array([""] + titles, pa.string()),
        "train_count": pa.array(train_count.astype(np.int64)),
        "genres": list_column(genre_idx),
        "year_bucket": pa.array(year_codes),
        "title_tokens": list_column(tokens),
    })
    feats = (Feature("genres", "multi_hot", cardinality=max(2, len(genre_vocab) + 1),
                     max_length=max(1, max(len(g) for g in genre_idx))),
             year_feat,
             Feature("title_tokens", "hashed_bag", cardinality=F.TITLE_BUCKETS,
                     max_length=F.TITLE_MAX_LENGTH))
    return table, feats


def write_movielens(out: str | Path, data: MovieLensData, *, min_rating: float | None = None,
                    split: str = "leave_last_out", valid_fraction: float = 0.1,
                    test_fraction: float = 0.1, history_length: int = 50,
                    rows_per_file: int = 250_000, chunk_rows: int = 250_000,
                    overwrite: bool = False, source: str = "") -> dict:
    """Encode, split and write ``data`` to ``out`` atomically; returns the stats dict that is
    also written to ``stats.json``.

    Raises:
        ValueError: bad split method / history_length, or no rating left after ``min_rating``.
        FileExistsError: ``out`` is non-empty and ``overwrite`` is False.
    """
    t0 = time.time()
    if split not in SPLIT_METHODS:
        raise ValueError(f"split must be one of {SPLIT_METHODS}, got {split!r}")
    if history_length < 1:
        raise ValueError(f"history_length must be >= 1, got {history_length}")
    u, i, ts, rating, users_raw, items_raw = _encode_sorted(data, min_rating)
    cuts = temporal_cuts(ts, valid_fraction, test_fraction) if split == "temporal" else None
    codes = temporal_split(ts, cuts) if cuts else leave_last_out(u)
    num_items = len(items_raw) + 1
    layout = DatasetSchema(num_users=len(users_raw) + 1, num_items=num_items, history_length=history_length,
                           context_features=F.CONTEXT_FEATURES)
    with atomic_directory(out, overwrite) as tmp:
        iw = SequenceWriter(tmp, layout, num_items)
        for lo, hi in user_chunks(u, chunk_rows):
            iw.write(u[lo:hi], i[lo:hi], ts[lo:hi], codes[lo:hi])
            log.info("%s: wrote %d / %d interactions (%.1fs)", data.variant, hi, len(u),
                     time.time() - t0)
        files = iw.close()
        users_table, user_feats = _user_table(tmp, data.users, users_raw)
        items_table, item_feats = _item_table(tmp, data.items, items_raw, iw.train_count)
        pq.write_table(users_table, tmp / "users.parquet")
        pq.write_table(items_table, tmp / "items.parquet")
        write_vocab(tmp, "users", [str(x) for x in users_raw])
        write_vocab(tmp, "items", [str(x) for x in items_raw])
        write_vocab(tmp, "day_of_week", F.DAY_NAMES)
        schema = DatasetSchema(
            num_users=len(users_raw) + 1, num_items=num_items, history_length=history_length,
            user_features=user_feats, item_features=item_feats,
            context_features=F.CONTEXT_FEATURES, name=data.variant, split=split,
            extra={"source": "movielens", "variant": data.variant})
        schema.save(tmp / "schema.json")
        stats = {
            "name": data.variant, "source": source, "rows": iw.rows, "interactions": len(u),
            "users": len(users_raw), "items": len(items_raw), "num_users": schema.num_users,
            "num_items": num_items, "items_in_item_file": len(data.items),
            "items_with_interactions": int(len(np.unique(i))),
            "timestamp_min": int(ts.min()), "timestamp_max": int(ts.max()),
            "temporal_cuts": list(cuts) if cuts else None, "files": files,
            "settings": {"min_rating": min_rating, "split": split, "history_length": history_length,
                         "valid_fraction": valid_fraction, "test_fraction": test_fraction,
                         "rows_per_file": rows_per_file, "chunk_rows": chunk_rows},
        }
        stats["seconds"] = round(time.time() - t0, 3)
        write_json(tmp / "stats.json", stats)
    log.info("%s: %s rows %s, %d users, %d items -> %s (%.1fs)", data.variant, len(u), iw.rows,
             len(users_raw), len(items_raw), out, time.time() - t0)
    return stats


def _encode_sorted(data: MovieLensData, min_rating: float | None):
    """Ratings (those >= ``min_rating``) as user and item indices (1-based, by sorted raw id; every item
    of the item file gets one), sorted by (user, timestamp): ``(user_idx int32, item_idx int32,
    timestamp int64, rating, sorted raw user ids, sorted raw item ids)``. Raises ValueError when no
    rating is left."""
    r = data.ratings
    if min_rating is not None:
        r = r[r["rating"].to_numpy() >= min_rating]
        if len(r) == 0:
            raise ValueError(f"no rating >= {min_rating} in {data.variant}")
    uid, iid = r["user_id"].to_numpy(), r["item_id"].to_numpy()
    users_raw = np.unique(uid)
    items_raw = np.union1d(data.items["item_id"].to_numpy(), iid)
    user_idx = (np.searchsorted(users_raw, uid) + 1).astype(np.int32)
    item_idx = (np.searchsorted(items_raw, iid) + 1).astype(np.int32)
    order = sort_order(user_idx, r["timestamp"].to_numpy())
    return (user_idx[order], item_idx[order], r["timestamp"].to_numpy()[order], r["rating"].to_numpy()[order],
            users_raw, items_raw)


def prepare_movielens(out: str | Path, variant: str = "ml-100k", *, src: str | Path | None = None,
                      data_dir: str | Path | None = None, overwrite: bool = False,
                      **options) -> dict:
    """Read MovieLens ``variant`` and write a prepared dataset to ``out``.

    Args:
        out: output directory (written atomically).
        variant: ``ml-100k``, ``ml-1m``, ``ml-10m``, ``ml-20m``, ``ml-25m`` or ``ml-latest-small``.
        src: folder (local path or URI; a URI is copied to a local temporary folder first) holding the raw
            files; default: :func:`find_movielens(variant, data_dir)`.
        overwrite: replace a non-empty ``out``.
        **options: ``min_rating``, ``split`` (``leave_last_out``/``temporal``),
            ``valid_fraction``, ``test_fraction``, ``history_length``, ``rows_per_file``,
            ``chunk_rows`` -- see :func:`write_movielens`.

    Returns:
        The stats dict written to ``stats.json``.

    Raises:
        FileExistsError: ``out`` non-empty without ``overwrite`` (checked before reading).
        DataFormatError: missing/empty/malformed raw files. FileNotFoundError: data not found.
    """
    if storage.is_nonempty(out) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; use overwrite=True "
                              f"(--overwrite) to replace it")
    t0 = time.time()
    fetched = storage.local_copy(src) if src is not None and storage.is_uri(src) else None
    folder = fetched[0] if fetched else Path(src) if src is not None else find_movielens(variant, data_dir)
    try:
        data = read_movielens(folder, variant)
    except DataFormatError as e:    # name the file under the URI, not under the temporary copy
        if not fetched:
            raise
        raise DataFormatError(e.path.replace(str(folder), str(src).rstrip("/")), e.message, e.line, e.value) from e
    finally:
        if fetched and fetched[1]:
            shutil.rmtree(folder, ignore_errors=True)
    log.info("%s: read %d ratings, %d items%s from %s (%.1fs)", variant, len(data.ratings),
             len(data.items), "" if data.users is None else f", {len(data.users)} users", folder,
             time.time() - t0)
    return write_movielens(out, data, overwrite=overwrite, source=str(src or folder), **options)
