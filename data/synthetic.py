"""Streaming synthetic dataset with planted structure, in the prepared-dataset layout.

Planted structure (all drawn from ``seed``):

* ``clusters`` (K) latent clusters. Every item belongs to one cluster (item feature ``category`` =
  cluster + 1) and has a preferred time-of-day window (one of ``windows`` equal windows, 6 hours
  each by default: window w covers hours [6w, 6w + 6) UTC). Clusters x windows groups are balanced.
* item popularity within its cluster is Zipf: weight (rank + 1) ** -zipf_exponent, random ranks.
* item ``genres`` (multi_hot, ``num_genres`` genres): each of the cluster's 2 core genres with
  probability 0.8, plus one random genre with probability 0.3 (never empty).
* every user has a cluster; user feature ``segment`` = cluster + 1 for ``segment_accuracy`` of the
  users, a random cluster otherwise.
* each interaction: the cluster is the user's own with probability ``in_cluster`` (else uniform);
  the window is the window of the interaction's hour with probability ``window_match`` (else
  uniform); the item is drawn by popularity within (cluster, window). So the hour changes which
  items are relevant. Rating: 4-5 for own-cluster draws, 1-3 otherwise (float32).
* per-user interaction counts: ``interactions`` split exactly over users (at least
  min(3, interactions // users) each, the rest multinomial with lognormal weights); timestamps
  strictly increase along each user's sequence from a random start in 2020 (UTC), with
  exponential gaps; context columns are derived from them exactly as for MovieLens.

Generation is vectorised per block of 1024 users with its own random stream, so the data do not
depend on ``chunk_users``/``chunk_rows``; blocks are grouped into chunks that are split, given
history/seen lists and appended to the part files, so peak memory depends on the chunk size and
on per-user arrays (a few bytes per user), not on ``interactions``. ``temporal`` cut points are
estimated from the first 64 blocks (users are i.i.d.).

Ground truth is written as ``synthetic_truth_users.parquet`` (``user_idx``, ``cluster``; row 0 has
cluster -1) and ``synthetic_truth_items.parquet`` (``item_idx``, ``cluster``, ``window``,
``popularity_rank``; row 0 has -1); ``stats.json["synthetic"]`` holds the parameters.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from twotower.data import features as F
from twotower.data.split import SPLIT_METHODS, leave_last_out, temporal_cuts, temporal_split
from twotower.data.vocab import vocab_table, write_vocab
from twotower.data.writer import SequenceWriter, atomic_directory, write_json
from twotower.model.schema import DatasetSchema, Feature

log = logging.getLogger("twotower.data")
BLOCK_USERS = 1024
TIME_START = 1_577_836_800  # 2020-01-01T00:00:00Z
TIME_SPAN = 365 * F.SECONDS_PER_DAY


class _World:
    """Items, users and per-user counts (arrays of size items or users only)."""

    def __init__(self, users, items, interactions, seed, clusters, windows, zipf_exponent,
                 num_genres, segment_accuracy):
        rng = np.random.default_rng([seed, 0])
        self.K = k = max(1, min(clusters, items // windows))
        self.W = windows
        perm = rng.permutation(items)
        self.item_cluster = np.empty(items, np.int32)
        self.item_window = np.empty(items, np.int32)
        self.item_cluster[perm] = np.arange(items) % k
        self.item_window[perm] = (np.arange(items) // k) % windows
        order = np.lexsort((rng.random(items), self.item_cluster))
        starts = np.searchsorted(self.item_cluster[order], np.arange(k))
        self.item_rank = np.empty(items, np.int64)
        self.item_rank[order] = np.arange(items) - np.repeat(starts, np.diff(np.r_[starts, items]))
        weight = (self.item_rank + 1.0) ** -zipf_exponent
        group = self.item_cluster.astype(np.int64) * windows + self.item_window
        self.by_group = np.argsort(group, kind="stable")
        g_sorted, w_sorted = group[self.by_group], weight[self.by_group]
        cs = np.cumsum(w_sorted)
        g_start = np.searchsorted(g_sorted, g_sorted)
        base = np.where(g_start > 0, cs[g_start - 1], 0.0)
        total = np.bincount(g_sorted, weights=w_sorted)[g_sorted]
        within = (cs - base) / total
        within[np.r_[g_sorted[1:] != g_sorted[:-1], True]] = 1.0
        self.cdf = within + g_sorted
        core = np.argsort(rng.random((k, num_genres)), axis=1)[:, :2]
        cand = np.stack([core[self.item_cluster, 0], core[self.item_cluster, 1],
                         rng.integers(num_genres, size=items)], axis=1) + 1
        has = rng.random((items, 3)) < np.array([0.8, 0.8, 0.3])
        has[~has.any(axis=1), 0] = True
        big = num_genres + 1
        vals = np.sort(np.where(has, cand, big), axis=1)
        vals[:, 1:][vals[:, 1:] == vals[:, :-1]] = big
        vals = np.sort(vals, axis=1)
        self.genre_lengths = (vals < big).sum(axis=1)
        self.genre_values = vals[vals < big].astype(np.int32)
        self.user_cluster = rng.integers(k, size=users).astype(np.int32)
        noisy = rng.random(users) >= segment_accuracy
        self.segment = np.where(noisy, rng.integers(k, size=users), self.user_cluster).astype(np.int32)
        base_n = min(3, interactions // users)
        lam = rng.lognormal(0.0, 1.0, users)
        self.lengths = base_n + rng.multinomial(interactions - base_n * users, lam / lam.sum())

    def block(self, seed, b, in_cluster, window_match):
        """Rows of users [b*BLOCK_USERS, ...): (user_idx int32, item_idx int32, ts int64,
        rating float32), sorted by user then time."""
        rng = np.random.default_rng([seed, 1, b])
        u0 = b * BLOCK_USERS
        lengths = self.lengths[u0:u0 + BLOCK_USERS]
        nu, n = len(lengths), int(lengths.sum())
        user0 = np.repeat(np.arange(u0, u0 + nu), lengths)
        start = TIME_START + rng.integers(0, TIME_SPAN, size=nu)
        scale = rng.uniform(2 * 3600, 36 * 3600, size=nu)
        gaps = 60.0 + rng.exponential(1.0, n) * np.repeat(scale, lengths)
        cs = np.r_[0.0, np.cumsum(gaps)]
        first = np.cumsum(lengths) - lengths
        ts = np.repeat(start, lengths) + (cs[1:] - np.repeat(cs[first], lengths)).astype(np.int64)
        hour_window = (ts % F.SECONDS_PER_DAY) * self.W // F.SECONDS_PER_DAY
        own = rng.random(n) < in_cluster
        cluster = np.where(own, self.user_cluster[user0], rng.integers(self.K, size=n))
        window = np.where(rng.random(n) < window_match, hour_window, rng.integers(self.W, size=n))
        key = cluster * self.W + window + rng.random(n)
        pick = np.minimum(np.searchsorted(self.cdf, key, side="right"), len(self.cdf) - 1)
        item = self.by_group[pick] + 1
        rating = np.where(own, rng.integers(4, 6, n), rng.integers(1, 4, n)).astype(np.float32)
        return (user0 + 1).astype(np.int32), item.astype(np.int32), ts.astype(np.int64), rating


def prepare_synthetic(out: str | Path, users: int = 10_000, items: int = 2_000,
                      interactions: int = 200_000, seed: int = 0, history_length: int = 50, *,
                      clusters: int = 20, windows: int = 4, in_cluster: float = 0.8,
                      window_match: float = 0.8, segment_accuracy: float = 0.8,
                      zipf_exponent: float = 1.0, num_genres: int = 18,
                      split: str = "leave_last_out", valid_fraction: float = 0.1,
                      test_fraction: float = 0.1, chunk_users: int = 50_000,
                      chunk_rows: int = 250_000, rows_per_file: int = 250_000,
                      overwrite: bool = False) -> dict:
    """Generate and write a synthetic dataset (see the module docstring) to ``out`` atomically.

    User i (1-based) has raw id ``str(i)`` and index i; likewise items. Returns the stats dict
    written to ``stats.json``.

    Raises:
        ValueError: non-positive sizes, ``items < windows``, bad split / history_length.
        FileExistsError: ``out`` is non-empty and ``overwrite`` is False.
    """
    t0 = time.time()
    if users < 1 or items < windows or interactions < 1 or history_length < 1 or windows < 1:
        raise ValueError("need users >= 1, items >= windows >= 1, interactions >= 1, "
                         "history_length >= 1")
    if split not in SPLIT_METHODS:
        raise ValueError(f"split must be one of {SPLIT_METHODS}, got {split!r}")
    world = _World(users, items, interactions, seed, clusters, windows, zipf_exponent,
                   num_genres, segment_accuracy)
    n_blocks = -(-users // BLOCK_USERS)
    cuts = None
    if split == "temporal":
        sample = [world.block(seed, b, in_cluster, window_match)[2] for b in range(min(n_blocks, 64))]
        cuts = temporal_cuts(np.concatenate(sample), valid_fraction, test_fraction)
    with atomic_directory(out, overwrite) as tmp:
        (tmp / "vocab").mkdir()
        iw = SequenceWriter(tmp, DatasetSchema(num_users=users + 1, num_items=items + 1,
                                               history_length=history_length,
                                               context_features=F.CONTEXT_FEATURES), items + 1)
        done_rows, ts_min, ts_max = _write_user_blocks(
            tmp, world, iw, seed=seed, in_cluster=in_cluster, window_match=window_match, cuts=cuts,
            history_length=history_length, chunk_users=chunk_users, chunk_rows=chunk_rows, t0=t0)
        files = iw.close()
        _write_items(tmp, world, iw.train_count)
        write_vocab(tmp, "items", np.arange(1, items + 1).astype(str).tolist())
        for name in ("segment", "category"):
            write_vocab(tmp, name, [str(c) for c in range(world.K)])
        write_vocab(tmp, "genres", [f"g{g:02d}" for g in range(num_genres)])
        write_vocab(tmp, "day_of_week", F.DAY_NAMES)
        card = max(2, world.K + 1)
        schema = DatasetSchema(
            num_users=users + 1, num_items=items + 1, history_length=history_length,
            user_features=(Feature("segment", "categorical", card),),
            item_features=(Feature("category", "categorical", card),
                           Feature("genres", "multi_hot", num_genres + 1,
                                   max_length=int(world.genre_lengths.max()))),
            context_features=F.CONTEXT_FEATURES, name="synthetic", split=split,
            extra={"source": "synthetic", "seed": seed})
        schema.save(tmp / "schema.json")
        stats = {
            "name": "synthetic", "source": "synthetic", "rows": iw.rows, "interactions": done_rows,
            "users": users, "items": items, "num_users": users + 1, "num_items": items + 1,
            "items_with_interactions": int((iw.train_count > 0).sum()),
            "timestamp_min": ts_min, "timestamp_max": ts_max,
            "temporal_cuts": list(cuts) if cuts else None, "files": files,
            "settings": {"split": split, "history_length": history_length, "seed": seed,
                         "valid_fraction": valid_fraction, "test_fraction": test_fraction,
                         "rows_per_file": rows_per_file, "chunk_users": chunk_users,
                         "chunk_rows": chunk_rows},
            "synthetic": {"clusters": world.K, "windows": windows, "window_hours": 24 / windows,
                          "in_cluster": in_cluster, "window_match": window_match,
                          "segment_accuracy": segment_accuracy, "zipf_exponent": zipf_exponent,
                          "num_genres": num_genres, "block_users": BLOCK_USERS,
                          "truth_files": ["synthetic_truth_users.parquet",
                                          "synthetic_truth_items.parquet"]},
        }
        stats["seconds"] = round(time.time() - t0, 3)
        write_json(tmp / "stats.json", stats)
    log.info("synthetic: %d interactions %s -> %s (%.1fs)", done_rows, iw.rows, out,
             time.time() - t0)
    return stats


def _write_user_blocks(tmp: Path, world: _World, iw: SequenceWriter, *, seed: int, in_cluster: float,
                       window_match: float, cuts, history_length: int, chunk_users: int, chunk_rows: int,
                       t0: float) -> tuple[int, int, int]:
    """Generate the users block by block, grouped into chunks of about ``chunk_users`` users or
    ``chunk_rows`` rows; per chunk: split, history/seen lists and the interaction parts (``iw``), the
    users table, the user vocabulary and the users' ground truth. Returns (rows, min, max timestamp)."""
    users = len(world.user_cluster)
    n_blocks = -(-users // BLOCK_USERS)
    row0 = {"user_idx": [0], "user_id": [""], "segment": [0]}
    uw = pq.ParquetWriter(tmp / "users.parquet", pa.table(row0, schema=pa.schema(
        [("user_idx", pa.int32()), ("user_id", pa.string()), ("segment", pa.int32())])).schema)
    uw.write_table(pa.table(row0, schema=uw.schema))
    vw = pq.ParquetWriter(tmp / "vocab" / "users.parquet", vocab_table([]).schema)
    tw = pq.ParquetWriter(tmp / "synthetic_truth_users.parquet", pa.schema(
        [("user_idx", pa.int32()), ("cluster", pa.int32())]))
    tw.write_table(pa.table({"user_idx": [0], "cluster": [-1]}, schema=tw.schema))
    pending, done_users, done_rows = [], 0, 0
    ts_min, ts_max = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    for b in range(n_blocks):
        pending.append(world.block(seed, b, in_cluster, window_match))
        nu = min(BLOCK_USERS * (b + 1), users) - done_users
        if b + 1 < n_blocks and nu < chunk_users and sum(len(p[0]) for p in pending) < chunk_rows:
            continue
        u, i, ts, r = (np.concatenate(c) for c in zip(*pending))
        pending = []
        if len(ts):
            ts_min, ts_max = min(ts_min, int(ts.min())), max(ts_max, int(ts.max()))
        codes = temporal_split(ts, cuts) if cuts else leave_last_out(u)
        iw.write(u, i, ts, codes)
        lo, hi = done_users + 1, done_users + nu + 1
        ids = np.arange(lo, hi)
        uw.write_table(pa.table({"user_idx": ids.astype(np.int32),
                                 "user_id": pa.array(ids.astype(str)).cast(pa.string()),
                                 "segment": world.segment[lo - 1:hi - 1] + 1}, schema=uw.schema))
        vw.write_table(vocab_table(ids.astype(str).tolist(), start=lo))
        tw.write_table(pa.table({"user_idx": ids.astype(np.int32),
                                 "cluster": world.user_cluster[lo - 1:hi - 1]}, schema=tw.schema))
        done_users, done_rows = done_users + nu, done_rows + len(u)
        log.info("synthetic: %d / %d users, %d / %d interactions written (%.1fs)", done_users, users, done_rows,
                 int(world.lengths.sum()), time.time() - t0)
    uw.close(), vw.close(), tw.close()
    return done_rows, ts_min, ts_max


def _write_items(tmp: Path, world: _World, train_count: np.ndarray) -> None:
    """``items.parquet`` (ids, empty titles, ``train_count``, ``category``, ``genres``) and the items'
    ground truth (cluster, window, popularity rank); row 0 is the unknown item."""
    items = len(world.item_cluster)
    offsets = np.r_[0, 0, np.cumsum(world.genre_lengths)].astype(np.int32)
    item_ids = np.arange(items + 1)
    pq.write_table(pa.table({
        "item_idx": pa.array(item_ids.astype(np.int32)),
        "item_id": pa.array(np.r_[[""], item_ids[1:].astype(str)]).cast(pa.string()),
        "title": pa.array([""] * (items + 1), pa.string()),
        "train_count": pa.array(train_count),
        "category": pa.array(np.r_[0, world.item_cluster + 1].astype(np.int32)),
        "genres": pa.ListArray.from_arrays(pa.array(offsets), pa.array(world.genre_values)),
    }), tmp / "items.parquet")
    pq.write_table(pa.table({
        "item_idx": pa.array(item_ids.astype(np.int32)),
        "cluster": pa.array(np.r_[-1, world.item_cluster].astype(np.int32)),
        "window": pa.array(np.r_[-1, world.item_window].astype(np.int32)),
        "popularity_rank": pa.array(np.r_[-1, world.item_rank].astype(np.int32)),
    }), tmp / "synthetic_truth_items.parquet")
