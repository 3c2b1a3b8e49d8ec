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
  items are relevant.
* sequential structure (``successor`` = s > 0): a fixed random permutation ``succ`` of the items, and
  every interaction after a user's first is, with probability s, the successor ``succ(previous item)``
  of the user's previous one instead of a fresh draw (chains of expected length 1 / (1 - s)): the order
  of a user's items matters, which only a model reading the sequence in order can use. Rating: 4-5 for own-cluster draws, 1-3 otherwise (float32).
* per-user interaction counts: ``interactions`` split exactly over users (at least
  min(3, interactions // users) each, the rest multinomial with lognormal weights); timestamps
  strictly increase along each user's sequence from a random start in 2020 (UTC), with
  exponential gaps; context columns are derived from them exactly as for MovieLens.

The generator is a source of the one preparation path: :func:`write_synthetic_tables` writes raw tables
(``interactions/part-*.parquet`` with ``user_id``, ``item_id``, ``timestamp``, ``rating``; ``users.parquet``
with ``segment``; ``items.parquet`` with ``category`` and ``genres``) and returns their spec, which the
prepare job turns into a dataset like any team's data. User i and item i have raw id i (1-based); the
vocabulary orders integer ids numerically and every id is in the users / items table, so index i is id i.

Generation is vectorised per block of 1024 users with its own random stream, so the data do not
depend on ``chunk_users``; blocks are grouped into chunks of about ``chunk_users`` users written as one
parquet file each, so peak memory depends on the chunk size and on per-user arrays (a few bytes per
user), not on ``interactions``.

Ground truth (:func:`write_truth`): ``synthetic_truth_users.parquet`` (``user_idx``, ``cluster``; row 0 has
cluster -1) and ``synthetic_truth_items.parquet`` (``item_idx``, ``cluster``, ``window``,
``popularity_rank``; row 0 has -1), copied into the dataset; ``stats.json["synthetic"]`` holds the parameters.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from twotower import storage
from twotower.data import features as F
from twotower.data.spec import ContextSpec, DatasetSpec, FeatureSpec, InteractionsSpec, SplitSpec, TableSpec

log = logging.getLogger("twotower.data")
BLOCK_USERS = 1024
TIME_START = 1_577_836_800  # 2020-01-01T00:00:00Z
TIME_SPAN = 365 * F.SECONDS_PER_DAY


class _World:
    """Items, users and per-user counts (arrays of size items or users only)."""

    def __init__(self, users, items, interactions, seed, clusters, windows, zipf_exponent,
                 num_genres, segment_accuracy):
        rng = np.random.default_rng([seed, 0])
        self.successor_of = np.random.default_rng([seed, 2]).permutation(items)     # 0-based item -> successor
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

    def block(self, seed, b, in_cluster, window_match, successor=0.0):
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
        item = self.by_group[pick]
        if successor > 0:
            item = self.follow_chains(item, rng.random(n) < successor, first)
        item = item + 1
        rating = np.where(own, rng.integers(4, 6, n), rng.integers(1, 4, n)).astype(np.float32)
        return (user0 + 1).astype(np.int32), item.astype(np.int32), ts.astype(np.int64), rating


    def follow_chains(self, item: np.ndarray, follow: np.ndarray, first: np.ndarray) -> np.ndarray:
        """0-based items (n,) where ``follow`` (n,) bool marks interactions that take the successor of the
        previous one (never a user's first, ``first`` = their indices): item_t = succ^(t - s)(item_s), s
        the last non-following interaction at or before t."""
        follow = follow.copy()
        follow[first[first < len(follow)]] = False
        pos = np.arange(len(item))
        start = np.maximum.accumulate(np.where(follow, 0, pos))
        depth, out = pos - start, item[start]
        for d in range(1, int(depth.max(initial=0)) + 1):
            deeper = depth >= d
            out[deeper] = self.successor_of[out[deeper]]
        return out


def _write(table: pa.Table, path: str) -> None:
    fs, inner = storage.resolve(path)
    pq.write_table(table, inner, filesystem=fs)


def write_synthetic_tables(dest: str, users: int = 10_000, items: int = 2_000, interactions: int = 200_000,
                           seed: int = 0, history_length: int = 50, *, clusters: int = 20, windows: int = 4,
                           in_cluster: float = 0.8, window_match: float = 0.8, segment_accuracy: float = 0.8,
                           zipf_exponent: float = 1.0, num_genres: int = 18, successor: float = 0.0,
                           split: SplitSpec | None = None,
                           chunk_users: int = 50_000, block_rows: int = 2_000_000) -> tuple[DatasetSpec, dict]:
    """Generate the tables (module docstring) under ``dest`` (local or URI). Returns (spec, the parameters
    for ``stats.json["synthetic"]``).

    Raises:
        ValueError: non-positive sizes, ``items < windows`` or ``successor`` outside [0, 1).
    """
    t0 = time.time()
    if users < 1 or items < windows or interactions < 1 or history_length < 1 or windows < 1:
        raise ValueError("need users >= 1, items >= windows >= 1, interactions >= 1, history_length >= 1")
    if not 0.0 <= successor < 1.0:
        raise ValueError(f"successor must be in [0, 1), got {successor}")
    world = _World(users, items, interactions, seed, clusters, windows, zipf_exponent, num_genres, segment_accuracy)
    storage.makedirs(storage.join(dest, "interactions"))
    n_blocks, pending, part, done = -(-users // BLOCK_USERS), [], 0, 0
    per_chunk = max(1, chunk_users // BLOCK_USERS)
    for b in range(n_blocks):
        pending.append(world.block(seed, b, in_cluster, window_match, successor))
        if len(pending) < per_chunk and b + 1 < n_blocks:
            continue
        u, i, ts, r = (np.concatenate(c) for c in zip(*pending))
        _write(pa.table({"user_id": u.astype(np.int64), "item_id": i.astype(np.int64), "timestamp": ts, "rating": r}),
               storage.join(dest, "interactions", f"part-{part:05d}.parquet"))
        pending, part, done = [], part + 1, done + len(u)
        log.info("synthetic: %d / %d interactions generated (%.1fs)", done, int(world.lengths.sum()), time.time() - t0)
    ids = np.arange(1, users + 1)
    _write(pa.table({"user_id": ids, "segment": pa.array(world.segment.astype(str).tolist())}),
           storage.join(dest, "users.parquet"))
    offsets = np.r_[0, np.cumsum(world.genre_lengths)].astype(np.int32)
    names = pa.array([f"g{g - 1:02d}" for g in world.genre_values.tolist()], pa.string())
    _write(pa.table({"item_id": np.arange(1, items + 1), "category": pa.array(world.item_cluster.astype(str).tolist()),
                     "genres": pa.ListArray.from_arrays(pa.array(offsets), names)}),
           storage.join(dest, "items.parquet"))
    spec = DatasetSpec(
        name="synthetic",
        interactions=InteractionsSpec(path=storage.join(dest, "interactions"), format="parquet", user_id="user_id",
                                      item_id="item_id", timestamp="timestamp", timestamp_unit="seconds"),
        context=ContextSpec(time_features=True),
        users=TableSpec(path=storage.join(dest, "users.parquet"), id="user_id",
                        features={"segment": FeatureSpec(kind="categorical")}),
        items=TableSpec(path=storage.join(dest, "items.parquet"), id="item_id",
                        features={"category": FeatureSpec(kind="categorical"), "genres": FeatureSpec(kind="multi_hot")}),
        history_length=history_length, split=split or SplitSpec(), block_rows=block_rows)
    params = {"clusters": world.K, "windows": windows, "window_hours": 24 / windows, "in_cluster": in_cluster,
              "window_match": window_match, "segment_accuracy": segment_accuracy, "zipf_exponent": zipf_exponent,
              "num_genres": num_genres, "successor": successor, "block_users": BLOCK_USERS, "seed": seed,
              "truth_files": ["synthetic_truth_users.parquet", "synthetic_truth_items.parquet"]}
    write_truth(world, dest)
    return spec, params


def write_truth(world: _World, dest: str) -> None:
    """The ground truth files (module docstring) into ``dest``; row 0 is the unknown user / item."""
    users, items = len(world.user_cluster), len(world.item_cluster)
    _write(pa.table({"user_idx": np.arange(users + 1, dtype=np.int32),
                     "cluster": np.r_[-1, world.user_cluster].astype(np.int32)}),
           storage.join(dest, "synthetic_truth_users.parquet"))
    _write(pa.table({"item_idx": np.arange(items + 1, dtype=np.int32),
                     "cluster": np.r_[-1, world.item_cluster].astype(np.int32),
                     "window": np.r_[-1, world.item_window].astype(np.int32),
                     "popularity_rank": np.r_[-1, world.item_rank].astype(np.int32)}),
           storage.join(dest, "synthetic_truth_items.parquet"))
