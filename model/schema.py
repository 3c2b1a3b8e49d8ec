"""The dataset schema: what `twotower prepare` writes to ``schema.json`` and every later stage reads.

A prepared dataset directory (format 2) looks like this (all indices are 0-based int32)::

    DATASET/
      schema.json                 # this module's DatasetSchema
      stats.json                  # counts per split, time range, prepare settings
      users.parquet               # one row per user index, row 0 = out-of-vocabulary user
      items.parquet               # one row per item index, row 0 = out-of-vocabulary item
      vocab/users.parquet         # raw id (string) -> index
      vocab/items.parquet
      vocab/<feature>.parquet     # raw value (string) -> index, one per categorical feature
      sequences/part-*.parquet    # every interaction once: one row per user (or window of a long user)

Index convention: index 0 of every vocabulary (users, items, every categorical feature) means
"unknown / out of vocabulary"; it is also the padding value of every list column. Known values are
1..n, so a vocabulary's ``cardinality`` is n + 1.

Sequences (``twotower.data.sequences`` writes and reads them): each row holds one user's interactions
in order (timestamp, then the order of the raw rows), every interaction stored once, with its split
code (0 train, 1 valid, 2 test; never decreasing along a user's sequence). A user with more than
``sequence_window`` interactions gets one row per window, each window repeating the last
``history_length`` items before it as a ``prefix`` (history only), so every interaction's history
can be cut from its own row. Training and evaluation examples (user, item, context, ``history`` =
the N items strictly before, most recent first) are cut from these rows in the input pipeline.

``users.parquet``: ``user_idx``, ``user_id`` (raw, string), then one column per user feature.
``items.parquet``: ``item_idx``, ``item_id`` (raw, string), ``title`` (string, may be empty),
``train_count`` int64 (interactions in the train split, for logQ correction), then the item feature
columns. Feature columns by kind: categorical int32 index; numeric and bucketized float32 raw
values (NaN = missing; the model standardises / bucketizes with the schema's statistics, so serving
passes raw values too); multi_hot list<int32> of indices 1..cardinality-1; hashed_bag list<int32>
of hash buckets 1..cardinality-1; vector fixed-size list<float32> of ``dim`` values (missing = zeros).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from twotower import storage

FORMAT_VERSION = 2
FeatureKind = Literal["categorical", "numeric", "bucketized", "multi_hot", "hashed_bag", "vector"]
FEATURE_KINDS = ("categorical", "numeric", "bucketized", "multi_hot", "hashed_bag", "vector")
INDEX_KINDS = ("categorical", "bucketized", "multi_hot", "hashed_bag")     # embedded by index (cardinality)
LIST_KINDS = ("multi_hot", "hashed_bag")
FLOAT_KINDS = ("numeric", "bucketized", "vector")                          # stored as raw float32 values
TIMESTAMP_SOURCE = "timestamp"
OOV_INDEX = 0
DEFAULT_SEQUENCE_WINDOW = 16_384


class SchemaError(ValueError):
    """A schema.json that is missing, unreadable, of an unknown format version, or inconsistent."""


@dataclass(frozen=True)
class Feature:
    """One input feature.

    Attributes:
        name: column name in the parquet files (and the request field at serving time).
        kind: ``categorical`` (int32 index, 0 = unknown), ``numeric`` (float32 raw value, standardised by
            the model: (x - mean) / std, missing (NaN) -> 0), ``bucketized`` (float32 raw value; the model
            embeds bucket ``1 + #{b in boundaries: b <= x}``, missing -> 0), ``multi_hot`` (list<int32> of
            indices), ``hashed_bag`` (list<int32> of hash buckets of text tokens), ``vector`` (``dim``
            float32 values, e.g. a pretrained content embedding).
        cardinality: number of indices including the unknown index 0 (categorical, multi_hot, hashed_bag;
            bucketized: len(boundaries) + 2); 0 for numeric and vector.
        max_length: for list kinds, the longest list stored (lists are padded to it when batched).
        dim: for vector, the number of values.
        mean / std: for numeric, the standardisation statistics (train split for context features).
        boundaries: for bucketized, the ascending bucket boundaries.
        source: ``""`` for a stored column; ``"timestamp"`` for a context feature derived from the event
            timestamp (``twotower.data.features.context_features``), never stored.
    """

    name: str
    kind: FeatureKind
    cardinality: int = 0
    max_length: int = 0
    dim: int = 0
    mean: float = 0.0
    std: float = 1.0
    boundaries: tuple[float, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise SchemaError(f"feature {self.name!r}: unknown kind {self.kind!r}; known: {', '.join(FEATURE_KINDS)}")
        object.__setattr__(self, "boundaries", tuple(float(b) for b in self.boundaries))
        if self.kind == "bucketized":
            b = self.boundaries
            if not b or any(not math.isfinite(x) for x in b) or any(x >= y for x, y in zip(b, b[1:])):
                raise SchemaError(f"feature {self.name!r}: boundaries must be finite and strictly ascending, got {b}")
            object.__setattr__(self, "cardinality", len(b) + 2)
        if self.kind in INDEX_KINDS and self.cardinality < 2:
            raise SchemaError(f"feature {self.name!r}: cardinality must be >= 2, got {self.cardinality}")
        if self.kind == "vector" and self.dim < 1:
            raise SchemaError(f"feature {self.name!r}: a vector feature needs dim >= 1, got {self.dim}")
        if self.kind == "numeric" and not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise SchemaError(f"feature {self.name!r}: needs a finite mean and std > 0, got {self.mean}, {self.std}")
        if self.source not in ("", TIMESTAMP_SOURCE):
            raise SchemaError(f"feature {self.name!r}: unknown source {self.source!r}")

    @property
    def stored(self) -> bool:
        """True when the feature is a column of the prepared data (not derived from the timestamp)."""
        return self.source == ""


@dataclass(frozen=True)
class DatasetSchema:
    """Names, kinds and sizes of every feature of a prepared dataset (see the module docstring).

    Attributes:
        num_users: user vocabulary size including the unknown index 0.
        num_items: item vocabulary size including the unknown index 0.
        history_length: N, the number of earlier items in an example's ``history`` (and the prefix
            repeated at the start of every window of a long user's sequence).
        user_features / item_features / context_features: feature lists; context features are
            per-interaction values (stored columns of the sequences, or derived from the timestamp).
        name: a label such as ``ml-1m`` or ``synthetic``.
        split: ``leave_last_out`` or ``temporal``.
        weighted: the sequences carry a per-interaction sample ``weight`` (float32) the loss uses.
        sequence_window: the most interactions one sequence row holds (longer users get more rows).
    """

    num_users: int
    num_items: int
    history_length: int
    user_features: tuple[Feature, ...] = ()
    item_features: tuple[Feature, ...] = ()
    context_features: tuple[Feature, ...] = ()
    name: str = ""
    split: str = "leave_last_out"
    weighted: bool = False
    sequence_window: int = DEFAULT_SEQUENCE_WINDOW
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.history_length < 1:
            raise SchemaError(f"history_length must be >= 1, got {self.history_length}")
        if self.sequence_window < 1:
            raise SchemaError(f"sequence_window must be >= 1, got {self.sequence_window}")
        names = [f.name for g in (self.user_features, self.item_features, self.context_features) for f in g]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SchemaError(f"feature names must be unique across users, items and context; repeated: {dup}")

    @property
    def stored_context(self) -> tuple[Feature, ...]:
        """Context features stored as sequence columns (not derived from the timestamp)."""
        return tuple(f for f in self.context_features if f.stored)

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
            raise SchemaError(f"schema format_version {version!r} is not supported (expected {FORMAT_VERSION}); "
                              f"prepare the dataset again with this twotower (`twotower prepare`)")
        try:
            feats = {k: tuple(Feature(**f) for f in d.get(k, ())) for k in
                     ("user_features", "item_features", "context_features")}
            return cls(num_users=int(d["num_users"]), num_items=int(d["num_items"]),
                       history_length=int(d["history_length"]), name=d.get("name", ""),
                       split=d.get("split", "leave_last_out"), weighted=bool(d.get("weighted", False)),
                       sequence_window=int(d.get("sequence_window", DEFAULT_SEQUENCE_WINDOW)),
                       format_version=version,
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
