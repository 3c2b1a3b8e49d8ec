"""The Ray Data stages of the prepare job (:mod:`twotower.distributed.prepare` runs them in order):
``group`` (read, hash-shuffle by user, sort, deduplicate, count), ``k_core`` (recount until stable) and
``sequences`` (encode, split, write the sequence files). Each stage's per-file or per-partition work is a
pure function of :mod:`twotower.data.events` / :mod:`twotower.data.sequences`; errors a task raises for bad
input (DataFormatError, SpecError) reach the caller as themselves (:func:`run_stage`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from twotower import storage
from twotower.data.errors import DataFormatError
from twotower.data.events import Lookup, count_values, encode_partition, group_partition, keep_mask, read_events
from twotower.data.sequences import SEQUENCES_DIR, TRAIN, build_sequence_rows, write_sequence_file
from twotower.data.spec import DatasetSpec, SpecError
from twotower.model.schema import DatasetSchema

log = logging.getLogger("twotower.data")
GROUPED = "_grouped"
QUANTILE_SAMPLE = 20_000             # per file: train values kept for quantile bucket boundaries


def _error_in(e: BaseException) -> BaseException | None:
    """The DataFormatError / SpecError a Ray task raised, dug out of Ray's wrappers (or None)."""
    pending, seen = [e], set()
    while pending:
        x = pending.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if type(x) in (DataFormatError, SpecError):
            return x
        pending += [getattr(x, "cause", None), x.__cause__, x.__context__]
    return None


def run_stage(stage: str, fn):
    """Run one Ray Data execution; a bad-input error raised in a task is re-raised as itself."""
    t0 = time.time()
    try:
        out = fn()
    except Exception as e:
        found = _error_in(e)
        if found is None:
            raise
        raise type(found)(*found.__reduce__()[1]) if isinstance(found, DataFormatError) else SpecError(str(found)) \
            from None
    log.info("prepare: %s done (%.1fs)", stage, time.time() - t0)
    return out


# ---- 1. group -----------------------------------------------------------------------------------------

def _read_file(batch: dict, spec: DatasetSpec, unit: str):
    """map_batches UDF (one file per call): canonical event tables of the file."""
    for path, index in zip(batch["path"], batch["index"]):
        yield from read_events(str(path), int(index), spec, unit)


def _group(table: pa.Table, spec: DatasetSpec, staging: str, with_ts: bool) -> pa.Table:
    """map_batches UDF (one hash partition): sort, deduplicate, write the grouped file, emit counts."""
    if table.num_rows == 0:
        return _counts_schema().empty_table()
    grouped, duplicates = group_partition(table, spec.interactions.deduplicate)
    name = hashlib.sha1(grouped["user_id"][0].as_py().encode()).hexdigest()[:16]
    fs, inner = storage.resolve(storage.join(staging, GROUPED, f"part-{name}.parquet"))
    pq.write_table(grouped, inner, filesystem=fs, compression="zstd")
    scalars = pa.table({"kind": ["rows", "duplicates", "file:" + name], "value": ["", "", ""],
                        "count": [grouped.num_rows, duplicates, grouped.num_rows]}, schema=_counts_schema())
    return pa.concat_tables([count_values(grouped, spec, with_ts), scalars])


def _counts_schema() -> pa.Schema:
    return pa.schema([("kind", pa.string()), ("value", pa.string()), ("count", pa.int64())])


def _sum_counts(ds, partitions: int) -> dict[str, pa.Table]:
    """Materialise ``ds.groupby(kind, value).sum(count)`` (hash-shuffled into ``partitions``) as
    {kind: table(value, count)}."""
    import ray

    table = ds.groupby(["kind", "value"], num_partitions=partitions).sum("count").to_arrow_refs()
    parts = [t for t in ray.get(table) if t.num_rows]
    if not parts:
        return {}
    table = pa.concat_tables(parts)
    table = table.rename_columns(["kind", "value", "count"])
    out = {}
    for kind in pc.unique(table["kind"]).to_pylist():
        sub = table.filter(pc.equal(table["kind"], kind))
        out[kind] = sub.select(["value", "count"])
    return out


def group(files: list[str], spec: DatasetSpec, unit: str, staging: str, partitions: int, with_ts: bool):
    """Stage 1: ({kind: counts}, grouped file URIs)."""
    import ray.data

    storage.makedirs(storage.join(staging, GROUPED))
    items = [{"path": f, "index": k} for k, f in enumerate(files)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(_read_file, batch_size=1, fn_kwargs={"spec": spec, "unit": unit}, batch_format="pyarrow")
    ds = ds.repartition(partitions, keys=["user_id"])
    ds = ds.map_batches(_group, batch_size=None, batch_format="pyarrow",
                        fn_kwargs={"spec": spec, "staging": staging, "with_ts": with_ts})
    counts = run_stage(f"group ({len(files)} files -> {partitions} partitions)", lambda: _sum_counts(ds, partitions))
    names = [k.removeprefix("file:") for k in counts if k.startswith("file:")]
    grouped = [storage.join(staging, GROUPED, f"part-{n}.parquet") for n in sorted(names)]
    return counts, grouped


def _actors(files: int):
    """An actor pool of 1 .. min(files, CPUs) actors (each holds the vocabularies once)."""
    import ray
    import ray.data

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, min(files, cpus)))


# ---- 2. k-core ------------------------------------------------------------------------------------------

class _CountKept:
    """map_batches UDF (one grouped file per call): value counts of the rows kept by the k-core sets."""

    def __init__(self, spec: DatasetSpec, users: Lookup, items: Lookup, with_ts: bool):
        self.spec, self.users, self.items, self.with_ts = spec, users, items, with_ts

    def __call__(self, batch: dict) -> pa.Table:
        parts = []
        for path in batch["path"]:
            fs, inner = storage.resolve(str(path))
            events = pq.read_table(inner, filesystem=fs)
            events = events.filter(pa.array(keep_mask(events, self.users, self.items)))
            parts.append(count_values(events, self.spec, self.with_ts))
        return pa.concat_tables(parts)


def k_core(counts: dict, grouped: list[str], spec: DatasetSpec, with_ts: bool):
    """Stage 2: drop users / items below ``min_user_interactions`` / ``min_item_interactions`` until none is
    left. Returns (counts of the kept rows, kept-user Lookup or None, kept-item Lookup or None, rounds)."""
    import ray.data

    it = spec.interactions
    if it.min_user_interactions <= 1 and it.min_item_interactions <= 1:
        return counts, None, None, 0
    rounds = 0
    while True:
        users, items = counts["user"], counts["item"]
        ok_u = pc.greater_equal(users["count"], it.min_user_interactions)
        ok_i = pc.greater_equal(items["count"], it.min_item_interactions)
        kept_u, kept_i = Lookup(users["value"].filter(ok_u).to_numpy(zero_copy_only=False)), \
            Lookup(items["value"].filter(ok_i).to_numpy(zero_copy_only=False))
        if pc.all(ok_u).as_py() and pc.all(ok_i).as_py():
            return counts, kept_u, kept_i, rounds
        if not len(kept_u.raw) or not len(kept_i.raw):
            raise DataFormatError(it.paths[0], f"no interaction is left after the k-core filter "
                                               f"(min_user_interactions {it.min_user_interactions}, "
                                               f"min_item_interactions {it.min_item_interactions})")
        rounds += 1
        ds = ray.data.from_items([{"path": g} for g in grouped], override_num_blocks=len(grouped))
        ds = ds.map_batches(_CountKept, batch_size=1, batch_format="numpy", compute=_actors(len(grouped)),
                            fn_constructor_kwargs={"spec": spec, "users": kept_u, "items": kept_i, "with_ts": with_ts})
        counts = run_stage(f"k-core round {rounds}", lambda: _sum_counts(ds, max(1, len(grouped))))


# ---- 4. sequences ----------------------------------------------------------------------------------------

@dataclass
class SequencePlan:
    """What every sequence task needs: the spec, the layout schema (stored context kinds, window, history),
    the vocabularies, the k-core sets and the temporal cuts, and the staging directory."""

    spec: DatasetSpec
    layout: DatasetSchema
    users: Lookup
    items: Lookup
    context: dict
    kept_users: Lookup | None
    kept_items: Lookup | None
    cuts: tuple[int, int] | None
    staging: str


class SequenceBuilder:
    """map_batches UDF (one grouped file per call): its users' sequence rows -> sequences/part-NNNNN.parquet;
    returns a row of statistics (interactions per split, train counts per item, context statistics)."""

    def __init__(self, plan: SequencePlan):
        self.plan = plan

    def __call__(self, batch: dict) -> pa.Table:
        return pa.concat_tables([self._file(str(p), int(i)) for p, i in zip(batch["path"], batch["index"])])

    def _file(self, path: str, index: int) -> pa.Table:
        p = self.plan
        fs, inner = storage.resolve(path)
        events = pq.read_table(inner, filesystem=fs)
        if p.kept_users is not None:
            events = events.filter(pa.array(keep_mask(events, p.kept_users, p.kept_items)))
        user, item, ts, split, columns = encode_partition(events, p.spec, p.users, p.items, p.context, p.cuts)
        rows = build_sequence_rows(user, item, ts, split, p.layout, columns)
        name = f"part-{index:05d}.parquet"
        counts = write_sequence_file(rows, storage.join(p.staging, SEQUENCES_DIR, name))
        train = split == TRAIN
        items_u, items_c = np.unique(item[train], return_counts=True)
        extra = {"users": int(len(np.unique(user))), "ts_min": int(ts.min()) if len(ts) else None,
                 "ts_max": int(ts.max()) if len(ts) else None, "numeric": {}, "sample": {}, "max_length": {}}
        rng = np.random.default_rng(index)
        for name_, f in p.spec.context.features.items():
            if f.kind in ("numeric", "bucketized"):
                v = np.asarray(columns[name_], np.float64)[train]
                v = v[np.isfinite(v)]
                extra["numeric"][name_] = [float(v.sum()), float((v * v).sum()), int(len(v))]
                if f.kind == "bucketized" and f.quantiles:
                    extra["sample"][name_] = rng.choice(v, min(len(v), QUANTILE_SAMPLE), replace=False).tolist()
            elif f.kind == "multi_hot":
                lengths = pc.list_value_length(columns[name_]).to_numpy(zero_copy_only=False)
                extra["max_length"][name_] = int(lengths.max(initial=0))
        return pa.table({"file": [name], "train": [counts["train"]], "valid": [counts["valid"]],
                         "test": [counts["test"]],
                         "train_items": pa.array([items_u.astype(np.int32)], pa.list_(pa.int32())),
                         "train_counts": pa.array([items_c.astype(np.int64)], pa.list_(pa.int64())),
                         "extra": [json.dumps(extra)]})


@dataclass
class SequenceStats:
    """What stage 4's files add up to, summed on the driver one file's row at a time (its memory does not
    grow with the number of files): interactions per split, train interactions per item index, each file's
    small context statistics (``extras``) and the file names."""

    rows: dict
    train_count: np.ndarray
    extras: list
    files: list

    def add(self, table: pa.Table) -> None:
        for s in ("train", "valid", "test"):
            self.rows[s] += int(pc.sum(table[s]).as_py() or 0)
        for items, counts in zip(table["train_items"].to_numpy(zero_copy_only=False),
                                 table["train_counts"].to_numpy(zero_copy_only=False)):
            np.add.at(self.train_count, np.asarray(items, np.int64), np.asarray(counts, np.int64))
        self.extras += [json.loads(x) for x in table["extra"].to_pylist()]
        self.files += table["file"].to_pylist()


def sequences(grouped: list[str], plan: SequencePlan, num_items: int) -> SequenceStats:
    """Stage 4: write the sequence files; their statistics summed as they arrive."""
    import ray.data

    ds = ray.data.from_items([{"path": g, "index": k} for k, g in enumerate(grouped)],
                             override_num_blocks=max(len(grouped), 1))
    ds = ds.map_batches(SequenceBuilder, batch_size=1, batch_format="numpy", compute=_actors(len(grouped)),
                        fn_constructor_kwargs={"plan": plan})
    stats = SequenceStats({"train": 0, "valid": 0, "test": 0}, np.zeros(num_items, np.int64), [], [])

    def run():
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            stats.add(table)
        return stats

    return run_stage(f"sequences ({len(grouped)} files)", run)
