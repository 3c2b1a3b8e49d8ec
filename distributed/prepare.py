"""The prepare job: a dataset spec -> a prepared dataset directory (format 2), on Ray Data end to end.

Pipeline (pure steps in :mod:`twotower.data.events`, :mod:`twotower.data.sequences`,
:mod:`twotower.data.entity_tables`; the Ray Data wiring here)::

    1 group     from_items(interaction files)
                  .map_batches(read_events)               one task per file, batches of 64k raw rows:
                                                          filter, check and convert every value
                  .repartition(P, keys=["user_id"])       hash shuffle: a user's events in one partition
                  .map_batches(group, batch_size=None)    per partition: sort by (user, time, file, row),
                                                          drop duplicates, write _grouped/part-*.parquet,
                                                          emit value counts (kind, value, count)
                  .groupby(["kind", "value"]).sum()       users, items, context values (, timestamps)
    2 k-core    from_items(grouped files).map_batches(count kept rows)...sum(), until no user or item
                falls below its minimum (only with min_user/item_interactions)
    3 driver    vocabularies (index 0 unknown; ids of the users/items tables join them), temporal cuts
    4 sequences from_items(grouped files).map_batches(SequenceBuilder, actor pool): encode, split,
                build sequence rows, write sequences/part-NNNNN.parquet, per-file statistics
    5 driver    users.parquet, items.parquet, vocab/, schema.json (last), stats.json; publish

Memory: no process holds all interactions. A read task holds one 64k-row batch; P = ceil(rows /
``block_rows``) partitions, so a shuffle reduce task and a sequence task hold one partition (about
``block_rows`` interactions, a few times over while sorting); the driver holds the vocabularies and
the users / items tables (one row per user / item), and the value counts of one kind at a time.
Output: written to a staging directory beside ``out`` (same filesystem or bucket) and published last
(:func:`twotower.storage.publish`): a failed run leaves ``out`` as it was.
"""
from __future__ import annotations

import json
import logging
import math
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from twotower import storage
from twotower.data import normalize as N
from twotower.data.entity_tables import bucket_boundaries, encode_entities, read_entities
from twotower.data.errors import DataFormatError
from twotower.data.events import Lookup, interaction_columns
from twotower.data.features import CONTEXT_FEATURES, DAY_NAMES
from twotower.data.raw import check_columns, estimate_rows, expand, file_columns, file_format, iter_batches
from twotower.data.sequences import SEQUENCES_DIR
from twotower.data.spec import DatasetSpec, SpecError
from twotower.data.vocab import vocab_order, write_vocab
from twotower.distributed.prepare_stages import GROUPED, SequencePlan, SequenceStats, group, k_core, sequences
from twotower.model.schema import DatasetSchema, Feature

log = logging.getLogger("twotower.data")


# ---- 3. vocabularies and cuts --------------------------------------------------------------------------

def _vocab(counts: dict, kind: str, min_count: int = 1, extra_ids: np.ndarray | None = None) -> np.ndarray:
    """Vocabulary (vocab_order) of the values of ``kind`` counted at least ``min_count`` times (+ ``extra_ids``)."""
    table = counts.get(kind)
    values = table["value"].filter(pc.greater_equal(table["count"], min_count)).combine_chunks() \
        if table is not None else pa.array([], pa.string())
    if extra_ids is not None and len(extra_ids):
        values = pa.concat_arrays([values.cast(pa.string()), pa.array(extra_ids.tolist(), pa.string())])
    return vocab_order(values)


def temporal_cuts(spec: DatasetSpec, counts: dict) -> tuple[int, int] | None:
    """(valid_start, test_start) unix seconds, given or chosen from the exact timestamp counts so that about
    ``valid_fraction`` / ``test_fraction`` of the kept interactions fall at or after them; None for
    leave-last-out."""
    sp = spec.split
    if sp.method != "temporal":
        return None
    if sp.valid_start is not None:
        return int(sp.valid_start), int(sp.test_start)
    ts = counts["ts"]
    values = pc.cast(ts["value"], pa.int64()).to_numpy()
    order = np.argsort(values)
    values, cum = values[order], np.cumsum(ts["count"].to_numpy()[order])
    total, top = int(cum[-1]), int(values[-1]) + 1

    def cut(frac_after: float) -> int:
        k = int(round(total * (1.0 - frac_after)))          # rows before the cut
        return top if k >= total else int(values[np.searchsorted(cum, k, side="right")])

    return cut(sp.valid_fraction + sp.test_fraction), cut(sp.test_fraction)


# ---- 5. tables, schema, publish ------------------------------------------------------------------------

def context_features(spec: DatasetSpec, vocabs: dict, stats: SequenceStats) -> tuple[Feature, ...]:
    """The schema's context features: the timestamp-derived ones, then each spec feature with its train
    statistics (numeric mean/std, quantile boundaries, multi-hot longest list) from the per-file stats."""
    extras = stats.extras
    out = list(CONTEXT_FEATURES) if spec.context.time_features else []
    for name, f in spec.context.features.items():
        if f.kind == "categorical":
            out.append(Feature(name, "categorical", cardinality=len(vocabs[name]) + 1))
        elif f.kind == "multi_hot":
            longest = max((e["max_length"].get(name, 0) for e in extras), default=0)
            out.append(Feature(name, "multi_hot", cardinality=len(vocabs[name]) + 1,
                               max_length=max(1, min(longest, f.max_length or longest))))
        elif f.kind == "numeric":
            s, ss, n = np.sum([e["numeric"][name] for e in extras], axis=0) if extras else (0.0, 0.0, 0)
            mean = s / n if n else 0.0
            std = math.sqrt(max(ss / n - mean * mean, 0.0)) if n else 1.0
            out.append(Feature(name, "numeric", mean=float(mean), std=std if std > 1e-12 else 1.0))
        else:
            sample = np.array([v for e in extras for v in e["sample"].get(name, [])], np.float64)
            out.append(Feature(name, "bucketized", boundaries=tuple(bucket_boundaries(f, sample))))
    return tuple(out)


def _layout(spec: DatasetSpec, vocabs: dict) -> DatasetSchema:
    """The schema the sequence tasks build rows with (stored context kinds; statistics come later)."""
    ctx = []
    for name, f in spec.context.features.items():
        card = len(vocabs.get(name, ())) + 1
        ctx.append(Feature(name, "numeric") if f.kind in ("numeric", "bucketized") else
                   Feature(name, f.kind, cardinality=max(card, 2), max_length=1))
    return DatasetSchema(num_users=2, num_items=2, history_length=spec.history_length, context_features=tuple(ctx),
                         weighted=spec.interactions.weight is not None, sequence_window=spec.sequence_window)


def _write_table(table: pa.Table, path: str) -> None:
    fs, inner = storage.resolve(path)
    pq.write_table(table, inner, filesystem=fs)


def _entity_table(kind: str, vocab: np.ndarray, columns: dict, train_count: np.ndarray | None) -> pa.Table:
    n = len(vocab) + 1
    out = {f"{kind}_idx": pa.array(np.arange(n, dtype=np.int32)),
           f"{kind}_id": pa.array([""] + vocab.tolist(), pa.string())}
    if kind == "item":
        out["title"] = columns.pop("title", pa.array([""] * n, pa.string()))
        out["train_count"] = pa.array(train_count.astype(np.int64))
    return pa.table(out | columns)


def detect_unit(files: list[str], spec: DatasetSpec) -> str:
    """The timestamp unit: the spec's, or detected from the first batch of the first file (logged)."""
    it = spec.interactions
    if it.timestamp_unit != "auto":
        return it.timestamp_unit
    for row0, table in iter_batches(files[0], it, [it.timestamp], 4096):
        at = N.Rows(files[0], np.arange(row0, row0 + table.num_rows), file_format(files[0], it) == "csv",
                    it.csv.header)
        unit = N.detect_unit(table, it.timestamp, at)
        log.info("prepare: timestamp unit %s (detected from %s; set interactions.timestamp_unit to choose)",
                 unit, files[0])
        return unit
    return "seconds"


def check_inputs(spec: DatasetSpec) -> tuple[list[str], str]:
    """Every interaction file exists and has the spec's columns; the filter parses. Returns (files, unit)."""
    files = expand(spec.interactions, "interactions.path")
    needed = interaction_columns(spec)
    for path in files:
        check_columns(path, spec.interactions, needed)
    if spec.interactions.filter:
        try:
            N.parse_filter(spec.interactions.filter, file_columns(files[0], spec.interactions))
        except ValueError as e:
            raise SpecError(f"interactions.filter: {e}") from None
    return files, detect_unit(files, spec)


def _quiet_ray_data():
    """Ray Data's bars in a terminal, none in logs (our stage lines say what runs): its execution-plan and
    progress INFO lines go; returns the function that restores the previous settings."""
    import sys

    import ray.data

    ctx, logger = ray.data.DataContext.get_current(), logging.getLogger("ray.data")
    before = (ctx.enable_progress_bars, ctx.print_on_execution_start, logger.level)
    ctx.enable_progress_bars, ctx.print_on_execution_start = sys.stderr.isatty(), False
    logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))

    def restore():
        ctx.enable_progress_bars, ctx.print_on_execution_start = before[:2]
        logger.setLevel(before[2])

    return restore


def prepare_dataset(spec: DatasetSpec, out: str, *, overwrite: bool = False, source: str = "",
                    extra_stats: dict | None = None, extra_files: dict[str, str] | None = None) -> dict:
    """Prepare ``spec`` into ``out`` (local path or URI) with Ray Data (module docstring); returns the stats
    dict also written to ``stats.json`` (plus ``extra_stats``; ``extra_files``: name -> path of small files
    copied into the dataset). Starts a local Ray runtime unless Ray is initialised or ``RAY_ADDRESS`` is set.

    Raises:
        FileExistsError: ``out`` is non-empty and not ``overwrite`` (checked first).
        DataFormatError: a missing file or column, or a bad value (names file, column, row, value).
        SpecError: a filter that does not parse or names an unknown column.
    Nothing is written to ``out`` unless the whole job succeeds.
    """
    from twotower.distributed.local_ray import start_ray

    t0 = time.time()
    if storage.is_nonempty(out) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; use --overwrite to replace it")
    files, unit = check_inputs(spec)
    tables = {k: read_entities(getattr(spec, k), k) if getattr(spec, k) else (None, None) for k in ("users", "items")}
    started = start_ray(min_cpus=4)
    staging = storage.staging_dir(out)
    quiet = _quiet_ray_data()
    try:
        stats = _stages(spec, files, unit, tables, staging, t0)
        stats |= {"source": source, **(extra_stats or {})}
        for name, path in (extra_files or {}).items():
            storage.write_bytes(storage.join(staging, name), storage.read_bytes(path))
        storage.write_bytes(storage.join(staging, "stats.json"), json.dumps(stats, indent=2, sort_keys=True).encode())
        storage.delete_dir(storage.join(staging, GROUPED))
        storage.publish(staging, out, overwrite=overwrite, last="schema.json")
    except BaseException:
        storage.delete_dir(staging)
        raise
    finally:
        quiet()
        if started is not None:
            import ray

            ray.shutdown()
    log.info("prepare: %s -> %s: %s interactions, %d users, %d items (%.1fs)", spec.name, out,
             stats["rows"], stats["users"], stats["items"], time.time() - t0)
    return stats


def _stages(spec: DatasetSpec, files: list[str], unit: str, tables: dict, staging: str, t0: float) -> dict:
    """Stages 1-5 into ``staging``; returns the stats dict."""
    rows_in = estimate_rows(files, spec.interactions)
    partitions = max(1, math.ceil(rows_in / spec.block_rows))
    with_ts = spec.split.method == "temporal" and spec.split.valid_start is None
    counts, grouped = group(files, spec, unit, staging, partitions, with_ts)
    if not grouped:
        raise DataFormatError(files[0], "no interaction is left (empty files, or the filter keeps no row)")
    kept_rows, dups = int(counts["rows"]["count"][0].as_py()), int(counts["duplicates"]["count"][0].as_py())
    counts, kept_u, kept_i, rounds = k_core(counts, grouped, spec, with_ts)
    table_ids = {k: (t[getattr(spec, k).id].combine_chunks().to_numpy(zero_copy_only=False) if t is not None else None)
                 for k, (t, _) in tables.items()}
    vocabs = {"users": _vocab(counts, "user", extra_ids=table_ids["users"]),
              "items": _vocab(counts, "item", extra_ids=table_ids["items"])}
    for name, f in spec.context.features.items():
        if f.kind in ("categorical", "multi_hot"):
            vocabs[name] = _vocab(counts, f"ctx:{name}", f.min_count or spec.min_count)
    cuts = temporal_cuts(spec, counts)
    plan = SequencePlan(spec, _layout(spec, vocabs), Lookup(vocabs["users"]), Lookup(vocabs["items"]),
                        {k: Lookup(v) for k, v in vocabs.items() if k not in ("users", "items")}, kept_u, kept_i,
                        cuts, staging)
    storage.makedirs(storage.join(staging, SEQUENCES_DIR))
    file_stats = sequences(grouped, plan, len(vocabs["items"]) + 1)
    return _write_dataset(spec, vocabs, tables, file_stats, staging, {
        "rows_read": rows_in, "rows_kept_by_filter": kept_rows + dups, "duplicates_removed": dups,
        "k_core_rounds": rounds, "partitions": partitions, "temporal_cuts": list(cuts) if cuts else None,
        "timestamp_unit": unit, "interaction_files": len(files), "t0": t0})


def _write_dataset(spec: DatasetSpec, vocabs: dict, tables: dict, file_stats: SequenceStats, staging: str,
                   info: dict) -> dict:
    """Stage 5: users.parquet, items.parquet, vocab/, schema.json; returns the stats dict."""
    n_items = len(vocabs["items"]) + 1
    train_count = file_stats.train_count
    feats = {}
    for kind, key in (("user", "users"), ("item", "items")):
        table, files = tables[key]
        columns, feats[key], feature_vocabs = encode_entities(table, getattr(spec, key), vocabs[key], key,
                                                              spec.min_count, files)
        _write_table(_entity_table(kind, vocabs[key], columns, train_count if kind == "item" else None),
                     storage.join(staging, f"{key}.parquet"))
        for name, values in feature_vocabs.items():
            write_vocab(staging, name, values)
    for name, values in vocabs.items():
        write_vocab(staging, name, values)
    if spec.context.time_features:
        write_vocab(staging, "day_of_week", list(DAY_NAMES))
    schema = DatasetSchema(
        num_users=len(vocabs["users"]) + 1, num_items=n_items, history_length=spec.history_length,
        user_features=feats["users"], item_features=feats["items"],
        context_features=context_features(spec, vocabs, file_stats), name=spec.name, split=spec.split.method,
        weighted=spec.interactions.weight is not None, sequence_window=spec.sequence_window,
        extra={"source": "spec"})
    rows, extras = file_stats.rows, file_stats.extras
    ts = [e["ts_min"] for e in extras if e["ts_min"] is not None], [e["ts_max"] for e in extras if e["ts_max"] is not None]
    t0 = info.pop("t0")
    stats = {"name": spec.name, "rows": rows, "interactions": sum(rows.values()),
             "users": len(vocabs["users"]), "items": len(vocabs["items"]), "num_users": schema.num_users,
             "num_items": n_items, "users_with_interactions": int(sum(e["users"] for e in extras)),
             "items_with_interactions": int((train_count > 0).sum()),
             "timestamp_min": min(ts[0]) if ts[0] else None, "timestamp_max": max(ts[1]) if ts[1] else None,
             "files": sorted(file_stats.files), **info,
             "settings": spec.model_dump(mode="json"), "seconds": round(time.time() - t0, 3)}
    storage.write_bytes(storage.join(staging, "schema.json"), schema.to_json().encode())
    return stats
