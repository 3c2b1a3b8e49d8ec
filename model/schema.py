"""The dataset schema: what `twotower prepare` writes to ``schema.json`` and every later stage reads.

A prepared dataset directory looks like this (all indices are 0-based int32)::

    DATASET/
      schema.json                 # this module's DatasetSchema
      stats.json                  # counts per split, time range, prepare settings
      users.parquet               # one row per user index, row 0 = out-of-vocabulary user
      items.parquet               # one row per item index, row 0 = out-of-vocabulary item
      vocab/users.parquet         # raw id (string) -> index
      vocab/items.parquet
      vocab/<feature>.parquet     # raw value (string) -> index, one per categorical feature
      interactions/{train,valid,test}/part-00000.parquet ...

Index convention: index 0 of every vocabulary (users, items, every categorical feature) means
"unknown / out of vocabulary"; it is also the padding value of every list column. Known values are
1..n, so a vocabulary's ``cardinality`` is n + 1.

Interaction columns: ``user_idx`` int32, ``item_idx`` int32, ``timestamp`` int64 (unix seconds),
``rating`` float32, the context columns named in ``context_features``, and ``history`` list<int32> of
exactly ``history_length`` item indices the user interacted with strictly before this row, most recent
first, right-padded with 0. Valid and test rows also carry ``seen_items`` list<int32>: every item of the
user in the earlier splits (train for valid; train and valid for test), used to exclude them at ranking.

``users.parquet``: ``user_idx``, ``user_id`` (raw, string), then one int32 column per categorical user
feature. ``items.parquet``: ``item_idx``, ``item_id`` (raw, string), ``title`` (string, may be empty),
``train_count`` int64 (interactions in the train split, for logQ correction), then the item feature
columns (categorical int32, multi_hot list<int32> of indices 1..cardinality-1, hashed_bag
list<int32> of bucket ids 1..cardinality-1).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from twotower import storage

FORMAT_VERSION = 1
FeatureKind = Literal["categorical", "numeric", "multi_hot", "hashed_bag"]
OOV_INDEX = 0
INTERACTION_COLUMNS = ("user_idx", "item_idx", "timestamp", "rating", "history")


class SchemaError(ValueError):
    """A schema.json that is missing, unreadable, of an unknown format version, or inconsistent."""


@dataclass(frozen=True)
class Feature:
    """One input feature.

    Attributes:
        name: column name in the parquet files.
        kind: ``categorical`` (int32 index, 0 = unknown), ``numeric`` (float32 scalar),
            ``multi_hot`` (list<int32> of indices), ``hashed_bag`` (list<int32> of hash buckets).
        cardinality: number of indices including the unknown index 0 (categorical, multi_hot,
            hashed_bag); 0 for numeric.
        max_length: for list kinds, the longest list stored (lists are padded to it when batched).
    """

    name: str
    kind: FeatureKind
    cardinality: int = 0
    max_length: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("categorical", "numeric", "multi_hot", "hashed_bag"):
            raise SchemaError(f"feature {self.name!r}: unknown kind {self.kind!r}")
        if self.kind != "numeric" and self.cardinality < 2:
            raise SchemaError(f"feature {self.name!r}: cardinality must be >= 2, got {self.cardinality}")


@dataclass(frozen=True)
class DatasetSchema:
    """Names, kinds and sizes of every feature of a prepared dataset (see the module docstring).

    Attributes:
        num_users: user vocabulary size including the unknown index 0.
        num_items: item vocabulary size including the unknown index 0.
        history_length: N, the fixed length of the ``history`` column.
        user_features / item_features / context_features: feature lists; context features are
            per-interaction columns (derived from the timestamp for MovieLens).
        name: a label such as ``ml-1m`` or ``synthetic``.
        split: ``leave_last_out`` or ``temporal``.
    """

    num_users: int
    num_items: int
    history_length: int
    user_features: tuple[Feature, ...] = ()
    item_features: tuple[Feature, ...] = ()
    context_features: tuple[Feature, ...] = ()
    name: str = ""
    split: str = "leave_last_out"
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def context_feature(self, name: str) -> Feature:
        """Return the context feature called ``name``; raises KeyError naming the known ones."""
        for f in self.context_features:
            if f.name == name:
                return f
        raise KeyError(f"unknown context field {name!r}; known: {[f.name for f in self.context_features]}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetSchema":
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise SchemaError(f"schema format_version {version!r} is not supported (expected {FORMAT_VERSION})")
        try:
            feats = {k: tuple(Feature(**f) for f in d.get(k, ())) for k in
                     ("user_features", "item_features", "context_features")}
            return cls(num_users=int(d["num_users"]), num_items=int(d["num_items"]),
                       history_length=int(d["history_length"]), name=d.get("name", ""),
                       split=d.get("split", "leave_last_out"), format_version=version,
                       extra=dict(d.get("extra", {})), **feats)
        except (KeyError, TypeError) as e:
            raise SchemaError(f"schema is missing or has a malformed field: {e}") from e

    @classmethod
    def load(cls, path: str | Path) -> "DatasetSchema":
        """Read a schema.json file or the schema.json inside a dataset directory (local path or URI).

        Raises:
            SchemaError: file missing, not JSON, unknown format version or malformed fields.
        """
        p = str(path)
        if not p.endswith(".json"):
            p = storage.join(p, "schema.json")
        return cls.from_dict(storage.read_json(p, SchemaError, "no schema.json (is this a prepared dataset directory?)"))
