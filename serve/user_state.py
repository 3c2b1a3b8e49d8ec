"""Per-user state for serving: raw id -> index, latest history, seen items, cold-start features.

Built once from a prepared dataset's sequences (``model/schema.py`` layout): each user's own sequence
entries, every split, in the order ``twotower prepare`` stored them (timestamp, then raw row order), so
a user's history here is the ``history`` the model would see for a next interaction after the last one:

* ``history(u)``: the N = ``history_length`` (the model's: ``twotower.model.sequence.history_length``,
  the dataset's by default) most recent items of user u over all splits, most
  recent first, right-padded with 0 (:func:`twotower.model.batch.pad_lists`) -> int64 (N,);
  ``histories(users)`` -> int64 (B, N) for a batch;
* ``seen(u)``: every distinct item of user u over all splits, ascending -> int64 (m,).

Memory: one int32 per interaction plus one int64 per user (ML-1M: ~4 MB; ML-25M: ~100 MB).
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from twotower import storage
from twotower.data.splits import sequence_files
from twotower.data.vocab import read_vocab
from twotower.model.batch import pad_lists
from twotower.model.schema import OOV_INDEX, DatasetSchema, Feature

from . import values
from .schema import RAW_ID_SCHEMA, RequestError, json_int, raw_id

MAX_ENUM = 64          # vocabularies up to this size are listed in the published schema


def requestable(schema: DatasetSchema) -> list[Feature]:
    """The user features a cold-start request may supply: all of them, of every kind."""
    return list(schema.user_features)


def user_feature_index(feature: Feature, value: object, vocab: dict[str, int] | None,
                       where: str | None = None) -> int:
    """Index of one raw cold-start value of a categorical (or one entry of a multi_hot) user feature: with
    a vocabulary any raw id (:func:`~twotower.serve.schema.raw_id`; values not in it are 0, unknown), else
    an integer index 0..cardinality-1. Raises RequestError naming ``where`` (default
    ``user_features.<name>``)."""
    where = where or f"user_features.{feature.name}"
    if vocab is not None:
        try:
            return int(vocab.get(raw_id(value), OOV_INDEX))
        except ValueError as e:
            raise RequestError(where, str(e)) from None
    try:
        index = json_int(value)
    except ValueError:
        index = -1
    if not 0 <= index < feature.cardinality:
        raise RequestError(where, f"must be an integer index in 0..{feature.cardinality - 1}, got {value!r}")
    return index


def user_feature_value(feature: Feature, value: object, vocab: dict[str, int] | None) -> object:
    """The model value of a raw cold-start value of user ``feature``, by kind: categorical
    :func:`user_feature_index`; numeric / bucketized the raw number; multi_hot a list of such values
    (unknown raw values dropped, like an unknown categorical value) -> sorted distinct indices; hashed_bag
    a text -> its hash buckets (``hash_tokens``, as prepare); vector exactly ``dim`` numbers
    (:mod:`twotower.serve.values`). Raises RequestError naming ``user_features.<name>``."""
    where = f"user_features.{feature.name}"
    return values.by_kind(feature, value, where, partial(user_feature_index, feature, vocab=vocab, where=where))


def _index_schema(feature: Feature, vocab: dict[str, int] | None) -> dict:
    if vocab is None:
        return {"type": "integer", "minimum": 0, "maximum": feature.cardinality - 1,
                "description": "an integer index (0 = unknown)"}
    known = sorted(vocab, key=vocab.get)
    if len(known) > MAX_ENUM:
        return {**RAW_ID_SCHEMA, "description": f"raw value ({len(known)} known; others count as unknown)"}
    return {"anyOf": [{"type": "string", "enum": known}, *RAW_ID_SCHEMA["anyOf"]],
            "description": "raw value: one of the known ones, others count as unknown"}


def user_feature_json_schema(feature: Feature, vocab: dict[str, int] | None) -> dict:
    """JSON Schema of the values :func:`user_feature_value` accepts; a small vocabulary is listed first
    (``anyOf``) to document the known values, others being accepted as unknown."""
    return values.schema_by_kind(feature, _index_schema(feature, vocab))


def _items_most_recent_first(root: str, num_users: int, with_time: bool = False
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(offsets int64 (num_users + 1,), items int32 (interactions,), timestamps int64 (interactions,) or
    None without ``with_time``) of every user's own sequence entries (each interaction once: a window's
    ``prefix`` entries are skipped), most recent first."""
    fs, _ = storage.resolve(root)
    t = pq.read_table([storage.resolve(f)[1] for f in sequence_files(root)], filesystem=fs,
                      columns=["user_idx", "start", "prefix", "item_idx"] + (["timestamp"] if with_time else []))
    lists = t["item_idx"].combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype(np.int64)
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(len(row_of)) - np.repeat(np.cumsum(lengths) - lengths, lengths)   # position in its row
    own = pos >= t["prefix"].to_numpy().astype(np.int64)[row_of]
    user = t["user_idx"].to_numpy().astype(np.int64)[row_of][own]
    seq_pos = (t["start"].to_numpy().astype(np.int64)[row_of] + pos)[own]            # position in the user's sequence
    items = pc.list_flatten(lists).to_numpy().astype(np.int32)[own]
    order = np.lexsort((-seq_pos, user))                                             # user asc, most recent first
    counts = np.bincount(user, minlength=num_users)[:num_users]
    times = None
    if with_time:
        times = pc.list_flatten(t["timestamp"].combine_chunks()).to_numpy().astype(np.int64)[own][order]
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), items[order], times


class UserState:
    """Histories, seen items and vocabularies of a prepared dataset's users (see the module docstring).

    Attributes:
        schema: the dataset schema. num_users: vocabulary size incl. the unknown index 0.
        offsets: int64 (num_users + 1,); ``items[offsets[u]:offsets[u+1]]`` are user u's items, most
            recent first (duplicates kept).
        items: int32 (num_interactions,).
        times: int64 (num_interactions,) unix seconds of ``items`` (kept for models with time-gap
            buckets, ``with_time``), else None.
        history_length: N, the items :meth:`history` returns (the model's; default the schema's).
    """

    def __init__(self, schema: DatasetSchema, user_vocab: Mapping[str, int], offsets: np.ndarray,
                 items: np.ndarray, feature_vocabs: Mapping[str, dict[str, int] | None] | None = None,
                 history_length: int | None = None, times: np.ndarray | None = None):
        self.schema, self.num_users = schema, schema.num_users
        self.times = None if times is None else np.asarray(times, np.int64)
        self.history_length = history_length or schema.history_length
        self.user_vocab = dict(user_vocab)
        self.offsets, self.items = np.asarray(offsets, np.int64), np.asarray(items, np.int32)
        self.feature_vocabs = dict(feature_vocabs or {})

    @classmethod
    def load(cls, dataset_dir: str | Path, schema: DatasetSchema | None = None,
             history_length: int | None = None, with_time: bool = False) -> "UserState":
        """Read ``vocab/users.parquet``, the user feature vocabularies and ``sequences/``; ``history_length``:
        N of :meth:`history` (the model's; default the schema's); ``with_time``: keep the interactions'
        timestamps too (:meth:`history_times`; 8 bytes more per interaction).

        Raises:
            FileNotFoundError: the dataset has no ``vocab/users.parquet`` or no sequence file.
        """
        root = storage.normalize(dataset_dir)
        schema = schema or DatasetSchema.load(root)
        vocab = read_vocab(root, "users")
        if vocab is None:
            raise FileNotFoundError(f"{storage.join(root, 'vocab', 'users.parquet')}: missing (not a prepared dataset?)")
        offsets, items, times = _items_most_recent_first(root, schema.num_users, with_time)
        fvocabs = {f.name: read_vocab(root, f.name) for f in schema.user_features if f.kind == "categorical"}
        return cls(schema, vocab, offsets, items, fvocabs, history_length, times)

    def lookup(self, user_id: str) -> int:
        """Index of raw ``user_id``; 0 (unknown) when it is not in the vocabulary."""
        return int(self.user_vocab.get(str(user_id), OOV_INDEX))

    def history(self, user_idx: int) -> np.ndarray:
        """int64 (N,): the user's N most recent items, most recent first, 0-padded (zeros for user 0)."""
        return self.histories([user_idx])[0]

    def histories(self, user_idx) -> np.ndarray:
        """int64 (B, N): :meth:`history` of each of B user indices (rows of zeros for 0 and unknown ones)."""
        return pad_lists([self.items[a:b] for a, b in self._spans(user_idx)], self.history_length)

    def history_times(self, user_idx) -> np.ndarray:
        """int64 (B, N) unix seconds of :meth:`histories` (0 at padding).

        Raises:
            ValueError: the state was loaded without ``with_time``.
        """
        if self.times is None:
            raise ValueError("this user state keeps no timestamps (UserState.load(..., with_time=True))")
        return pad_lists([self.times[a:b] for a, b in self._spans(user_idx)], self.history_length)

    def _spans(self, user_idx) -> list[tuple[int, int]]:
        """(start, end) in ``items`` of the newest ``history_length`` entries of each user index (empty
        for 0 and unknown ones)."""
        idx = np.asarray(user_idx, np.int64).reshape(-1)
        known = (idx > 0) & (idx < self.num_users)
        lo = self.offsets[np.where(known, idx, 0)]
        hi = np.where(known, np.minimum(self.offsets[np.where(known, idx + 1, 1)], lo + self.history_length), lo)
        return list(zip(lo.tolist(), hi.tolist()))

    def seen(self, user_idx: int) -> np.ndarray:
        """int64 (m,): distinct items of the user over all splits, ascending (empty for user 0)."""
        if not 0 < user_idx < self.num_users:
            return np.zeros(0, np.int64)
        return np.unique(self.items[self.offsets[user_idx]:self.offsets[user_idx + 1]]).astype(np.int64)

    def encode_user_features(self, features: Mapping[str, object] | None) -> dict[str, object]:
        """Raw cold-start user features -> {name: model value} for the user tower (:func:`user_feature_value`).

        Categorical (and multi_hot) values are looked up as strings in ``vocab/<name>.parquet``; a value not
        in the vocabulary is 0 (unknown: contributes nothing, like an unseen zip code; dropped from a
        multi_hot list). Without a vocabulary file integer indices 0..cardinality-1 are expected. Numeric
        and bucketized values are raw numbers, hashed_bag values texts, vector values ``dim`` numbers.

        Raises:
            RequestError: a feature the model does not have, or a value its kind does not allow (names
                ``user_features.<name>``).
        """
        by_name = {f.name: f for f in self.schema.user_features}
        out: dict[str, object] = {}
        for name, value in (features or {}).items():
            f = by_name.get(name)
            if f is None:
                raise RequestError(f"user_features.{name}", f"unknown user feature; known: {list(by_name)}")
            out[name] = user_feature_value(f, value, self.feature_vocabs.get(name))
        return out
