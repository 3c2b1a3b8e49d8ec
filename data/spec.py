"""The dataset spec: a short YAML file declaring a team's own interaction, user and item tables.

``twotower prepare table --spec dataset.yaml --out DIR`` prepares it (:mod:`twotower.distributed.prepare`);
MovieLens and the synthetic generator are sources that write tables plus a spec and take the same path.
Every key is checked: an unknown key is an error naming it and the nearest valid one. Example (an
e-commerce layout; every key not shown has the default given in the models below)::

    name: shop
    interactions:
      path: s3://bucket/events/            # file, directory, glob or a list of them; parquet or csv
      user_id: customer_id
      item_id: sku
      timestamp: ts                        # integer seconds or milliseconds, or an arrow timestamp
      weight: dwell_weight                 # optional per-interaction sample weight
      filter: "event == 'purchase' or event == 'cart'"
      min_user_interactions: 5             # k-core
    context:
      time_features: true                  # hour_sin, hour_cos, day_of_week, is_weekend from ts
      features:
        device: {kind: categorical}
    items:
      path: s3://bucket/products.parquet
      id: sku
      title: name
      features:
        category: {kind: categorical}
        price: {kind: numeric}
        description: {kind: text, max_length: 32}
        image_embedding: {kind: vector, dim: 512}

Feature kinds: ``categorical`` (values -> vocabulary indices, rarer than ``min_count`` -> unknown),
``numeric`` (standardised with the train split's (context) or the table's mean and std by the model),
``bucketized`` (``boundaries`` given, or ``quantiles`` buckets), ``multi_hot`` (a list column, or a
string column split on ``separator``), ``text`` (lower-cased word tokens hashed into ``buckets``, at
most ``max_length`` of them; users and items only), ``vector`` (``dim`` floats per row, e.g. a
pretrained image embedding; users and items only).
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from twotower import storage

FeatureSpecKind = Literal["categorical", "numeric", "bucketized", "multi_hot", "text", "vector"]
CONTEXT_KINDS = ("categorical", "numeric", "bucketized", "multi_hot")
RESERVED = {"user_idx", "item_idx", "user_id", "item_id", "timestamp", "weight", "split", "prefix", "start",
            "history", "seen_items", "title", "train_count"}


class SpecError(ValueError):
    """A dataset spec that is unreadable, has an unknown key, a bad value or an impossible combination.
    The message names the key (``interactions.user_id``, ``items.features.price.kind``)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CsvOptions(_Strict):
    """How to read CSV files: ``delimiter`` (one character), ``header`` (first line holds the column
    names), ``column_names`` (required when there is no header)."""

    delimiter: str = Field(",", min_length=1, max_length=1)
    header: bool = True
    column_names: list[str] | None = None

    @model_validator(mode="after")
    def _names(self) -> "CsvOptions":
        if not self.header and not self.column_names:
            raise ValueError("column_names is required when header is false")
        return self


class Source(_Strict):
    """Where a table's files are: ``path`` is a file, a directory (every file in it, recursively), a
    glob (``events/*.parquet``) or a list of them, local or a URI (``s3://``, ``gs://``, ...);
    ``format`` is ``parquet`` or ``csv`` (default: from the file extension)."""

    path: str | list[str]
    format: Literal["parquet", "csv"] | None = None
    csv: CsvOptions = Field(default_factory=CsvOptions)

    @property
    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)


class LongTable(Source):
    """A table with one row per (``id``, value), e.g. MovieLens ``tags.csv``: a multi_hot feature of the
    users / items table that collects, per id, the values of its ``column`` over all rows."""

    id: str


class FeatureSpec(_Strict):
    """One feature: its ``kind`` (module docstring), the source ``column`` (default: the feature's name)
    and the options of its kind; a multi_hot feature of a users / items table may come from another
    ``table`` with one row per (id, value)."""

    kind: FeatureSpecKind
    column: str | None = None
    table: LongTable | None = None
    min_count: int | None = Field(None, ge=1, description="categorical / multi_hot: rarer values -> unknown")
    boundaries: list[float] | None = None
    quantiles: int | None = Field(None, ge=2, le=1000, description="bucketized: number of equal-count buckets")
    separator: str | None = Field(None, min_length=1, description="multi_hot: split a string column on it")
    max_length: int | None = Field(None, ge=1, description="multi_hot: values kept; text: tokens kept (16)")
    buckets: int = Field(1024, ge=2, description="text: hash buckets (index 0 is padding)")
    dim: int | None = Field(None, ge=1, description="vector: values per row")

    @model_validator(mode="after")
    def _kind_options(self) -> "FeatureSpec":
        if self.kind == "bucketized" and (self.boundaries is None) == (self.quantiles is None):
            raise ValueError("bucketized needs exactly one of boundaries or quantiles")
        if self.boundaries is not None and any(a >= b for a, b in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"boundaries must be strictly ascending, got {self.boundaries}")
        if self.kind == "vector" and self.dim is None:
            raise ValueError("vector needs dim (the number of values per row)")
        for option, kinds in (("boundaries", ("bucketized",)), ("quantiles", ("bucketized",)),
                              ("separator", ("multi_hot",)), ("dim", ("vector",)), ("table", ("multi_hot",)),
                              ("min_count", ("categorical", "multi_hot"))):
            if getattr(self, option) is not None and self.kind not in kinds:
                raise ValueError(f"{option} applies to {' / '.join(kinds)} features, not {self.kind}")
        return self


class InteractionsSpec(Source):
    """The interaction log: one row per (user, item, time) event."""

    user_id: str
    item_id: str
    timestamp: str
    timestamp_unit: Literal["auto", "seconds", "milliseconds"] = Field(
        "auto", description="integer timestamps; auto: milliseconds when the values exceed 1e11 (logged)")
    weight: str | None = Field(None, description="per-interaction sample weight column (>= 0) the loss uses")
    filter: str | None = Field(None, description="keep rows where this holds, e.g. \"rating >= 4\"")
    deduplicate: bool = Field(True, description="drop repeated identical (user, item, timestamp) rows")
    min_user_interactions: int = Field(0, ge=0, description="k-core: drop users with fewer")
    min_item_interactions: int = Field(0, ge=0, description="k-core: drop items with fewer")


class ContextSpec(_Strict):
    """Request-time context: ``time_features`` derives hour (sin/cos), day of week and weekend from the
    timestamp; ``features`` are interaction columns (categorical, numeric, bucketized, multi_hot)."""

    time_features: bool = True
    features: dict[str, FeatureSpec] = Field(default_factory=dict)


class TableSpec(Source):
    """A users or items table: its ``id`` column, an optional display ``title`` column (items) and
    its features. Ids missing from the table get the unknown row; table ids without interactions
    still get an index (cold items can be recommended and indexed)."""

    id: str
    title: str | None = None
    features: dict[str, FeatureSpec] = Field(default_factory=dict)


class SplitSpec(_Strict):
    """``leave_last_out``: per user the last interaction is test, the second last valid (users with
    fewer than 3 stay in train). ``temporal``: global cut timestamps, given (``valid_start``,
    ``test_start``, unix seconds) or chosen so that about ``valid_fraction`` / ``test_fraction`` of the
    interactions fall after them."""

    method: Literal["leave_last_out", "temporal"] = "leave_last_out"
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    valid_start: int | None = None
    test_start: int | None = None

    @model_validator(mode="after")
    def _cuts(self) -> "SplitSpec":
        if (self.valid_start is None) != (self.test_start is None):
            raise ValueError("give both valid_start and test_start, or neither")
        if self.valid_start is not None and self.valid_start > self.test_start:
            raise ValueError(f"valid_start {self.valid_start} is after test_start {self.test_start}")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError("valid_fraction + test_fraction must be < 1")
        return self


class DatasetSpec(_Strict):
    """A dataset: its tables, context, split and the job's sizes (see the module docstring).

    ``block_rows`` bounds memory: interactions are hash-partitioned by user into partitions of about
    this many rows, and each is sorted and cut into sequences by one task (peak memory of a task is a
    small multiple of one partition; the driver holds the vocabularies, not the interactions).
    """

    name: str = "dataset"
    interactions: InteractionsSpec
    context: ContextSpec = Field(default_factory=ContextSpec)
    users: TableSpec | None = None
    items: TableSpec | None = None
    history_length: int = Field(50, ge=1)
    split: SplitSpec = Field(default_factory=SplitSpec)
    min_count: int = Field(1, ge=1, description="default min_count of categorical / multi_hot vocabularies")
    sequence_window: int = Field(16_384, ge=1, description="most interactions per sequence row")
    block_rows: int = Field(2_000_000, ge=1_000, description="interactions per shuffle partition (memory bound)")

    @model_validator(mode="after")
    def _features(self) -> "DatasetSpec":
        groups = {"context.features": self.context.features,
                  "users.features": self.users.features if self.users else {},
                  "items.features": self.items.features if self.items else {}}
        seen: dict[str, str] = {}
        for where, feats in groups.items():
            for name, f in feats.items():
                if name in RESERVED:
                    raise ValueError(f"{where}.{name}: the name is reserved; choose another (set column: {name})")
                if name in seen:
                    raise ValueError(f"{where}.{name}: the name is also used in {seen[name]}; names must be unique")
                seen[name] = where
                if where == "context.features" and f.kind not in CONTEXT_KINDS:
                    raise ValueError(f"{where}.{name}: kind {f.kind} is not a context kind ({', '.join(CONTEXT_KINDS)})")
                if where == "context.features" and f.table is not None:
                    raise ValueError(f"{where}.{name}: table applies to users / items features, not context")
        if self.context.time_features:
            for name in ("hour_sin", "hour_cos", "day_of_week", "is_weekend"):
                if name in seen:
                    raise ValueError(f"{seen[name]}.{name}: the name is taken by context.time_features")
        return self


def _model_in(annotation) -> tuple[type[BaseModel] | None, bool]:
    """(the pydantic model inside an annotation such as ``X | None`` or ``dict[str, X]``, is it a dict)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    for inner in getattr(annotation, "__args__", ()):
        model, _ = _model_in(inner)
        if model is not None:
            return model, getattr(annotation, "__origin__", None) is dict
    return None, False


def _suggest(model: type[BaseModel], loc: tuple) -> str:
    """' (did you mean X?)' for an unknown key at ``loc``, from the field names of the model there."""
    target, skip = model, False
    for part in loc[:-1]:
        if skip or isinstance(part, int):      # a dict key (feature name) or a list position
            skip = False
            continue
        field = target.model_fields.get(part)
        if field is None:
            return ""
        target, skip = _model_in(field.annotation)
        if target is None:
            return ""
    close = difflib.get_close_matches(str(loc[-1]), list(target.model_fields), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid keys: {', '.join(target.model_fields)})"


def spec_error(e: ValidationError, source: str) -> SpecError:
    """A SpecError from pydantic's error: each problem with its dotted key, unknown keys with a suggestion."""
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        key, msg = ".".join(str(p) for p in loc), err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key{_suggest(DatasetSpec, loc)}")
        else:
            lines.append(f"{key}: {msg}" if key else msg)
    return SpecError(f"{source}: " + "; ".join(lines))


def parse_spec(data: dict, source: str = "spec") -> DatasetSpec:
    """Validate a spec dict. Raises SpecError naming every bad key (``source`` prefixes the message)."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a mapping of keys (interactions, users, items, ...), "
                        f"got {type(data).__name__}")
    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as e:
        raise spec_error(e, source) from None


def load_spec(path: str | Path) -> DatasetSpec:
    """Read and validate a YAML spec (local path or URI). Relative table paths are taken relative to
    the spec's folder. Raises SpecError (unreadable YAML, bad keys) or FileNotFoundError."""
    text = storage.read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    spec = parse_spec(data, str(path))
    return resolve_paths(spec, storage.parent(storage.normalize(path)))


def resolve_paths(spec: DatasetSpec, base: str) -> DatasetSpec:
    """The spec with every relative local table path joined to ``base``."""
    def fix(p: str) -> str:
        return p if storage.is_uri(p) or Path(p).is_absolute() else storage.join(base, p)

    def fixed(src: Source) -> Source:
        return src.model_copy(update={"path": [fix(p) for p in src.paths] if isinstance(src.path, list)
                                      else fix(src.path)})

    update = {}
    for key in ("interactions", "users", "items"):
        src = getattr(spec, key)
        if src is None:
            continue
        src = fixed(src)
        if key != "interactions":
            src = src.model_copy(update={"features": {
                name: f.model_copy(update={"table": fixed(f.table)}) if f.table else f
                for name, f in src.features.items()}})
        update[key] = src
    return spec.model_copy(update=update)
