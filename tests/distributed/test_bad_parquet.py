"""Corrupted parquet inputs fail training (and the index job) with an error naming the file.

Damage found from the footer (garbage bytes, truncated file, missing column, wrong column type, no
``twotower.events`` metadata) is caught before Ray starts; ``skip_bad_files`` leaves such files out, logs and records them. A bad data
page behind a valid footer fails the run, and the error names the file too (no hang, no skip).
The same holds for a dataset on S3 (``s3_store``): the skip-bad-files run reads its dataset from
``s3://`` and writes its run (Ray Train checkpoints and the artifacts) to ``s3://``.
"""
from __future__ import annotations

import json
import logging
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twotower.data.errors import DataFormatError
from twotower.data.sequences import read_events_metadata, write_sequence_file
from twotower.distributed.config import TrainConfig
from twotower.distributed.index_embed import check_item_files
from twotower.distributed.trainer import TwoTowerTrainer
from twotower import storage
from twotower.model.checkpoint import load_checkpoint


def _config(tmp_path, **overrides) -> TrainConfig:
    base = dict(num_workers=2, batch_size=128, epochs=1, patience=0, storage_path=str(tmp_path / "runs"),
                run_name="bad", max_steps_per_epoch=5, stall_timeout_s=240,
                model={"hidden_dims": [32], "final_embedding_dim": 16})
    return TrainConfig.model_validate({**base, **overrides})


@pytest.fixture(scope="module")
def three_file_dataset(synthetic_dataset, tmp_path_factory):
    """The synthetic dataset with its sequences stored as three files of several row groups."""
    out = tmp_path_factory.mktemp("three_files") / "synthetic"
    shutil.copytree(synthetic_dataset, out)
    folder = out / "sequences"
    table = pa.concat_tables(pq.read_table(f) for f in sorted(folder.iterdir()))
    for f in folder.iterdir():
        f.unlink()
    third = -(-table.num_rows // 3)
    for k in range(3):
        write_sequence_file(table.slice(k * third, third), str(folder / f"part-{k:05d}.parquet"),
                            row_group_rows=max(third // 4, 1))
    return out


@pytest.fixture
def dataset(three_file_dataset, tmp_path):
    """A fresh copy of ``three_file_dataset`` to damage."""
    return shutil.copytree(three_file_dataset, tmp_path / "dataset")


def _part(dataset, k: int):
    return dataset / "sequences" / f"part-{k:05d}.parquet"


def _damage(path, kind: str) -> None:
    """Corrupt the parquet file at ``path`` in place."""
    if kind == "garbage":
        path.write_bytes(b"this is not a parquet file\n" * 200)
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "missing_column":       # a column only validation reads; the footer metadata is kept
        pq.write_table(pq.read_table(path).drop_columns(["seen_before"]), path)
    elif kind == "no_events":
        pq.write_table(pq.read_table(path).replace_schema_metadata(None), path)
    elif kind == "wrong_type":
        table = pq.read_table(path)
        i = table.schema.get_field_index("user_idx")
        pq.write_table(table.set_column(i, "user_idx", table["user_idx"].cast(pa.string())), path)
    elif kind == "bad_page":             # valid footer; the last row group's first data page is garbage
        meta = pq.ParquetFile(path).metadata
        offset = meta.row_group(meta.num_row_groups - 1).column(0).data_page_offset
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(b"\xde\xad\xbe\xef" * 16)
    else:
        raise ValueError(kind)


@pytest.mark.parametrize("part", [0, 2])
@pytest.mark.parametrize("kind,reason", [("garbage", "not a readable parquet file"),
                                         ("truncated", "not a readable parquet file"),
                                         ("missing_column", "missing column 'seen_before'"),
                                         ("wrong_type", "column 'user_idx' has type string, expected integer"),
                                         ("no_events", "no 'twotower.events' footer metadata")])
def test_footer_damage_fails_before_ray_starts_naming_the_file(dataset, tmp_path, part, kind, reason):
    bad = _part(dataset, part)
    _damage(bad, kind)
    with pytest.raises(DataFormatError, match=reason) as info:
        TwoTowerTrainer(_config(tmp_path)).fit(dataset)
    assert info.value.path == str(bad)
    assert str(bad) in str(info.value) and "skip_bad_files" in str(info.value)
    assert not (tmp_path / "runs" / "bad").exists()              # nothing was started


def test_footer_damage_on_s3_fails_before_ray_starts_naming_the_uri(dataset, tmp_path, s3_store):
    _damage(_part(dataset, 1), "truncated")
    uri = f"{s3_store}/footer-damage/dataset"
    storage.upload_dir(dataset, uri, last="schema.json")
    with pytest.raises(DataFormatError, match="not a readable parquet file") as info:
        TwoTowerTrainer(_config(tmp_path)).fit(uri)
    assert info.value.path == f"{uri}/sequences/part-00001.parquet"
    assert not (tmp_path / "runs" / "bad").exists()


def test_cli_flags_and_a_bad_file_exit_2_naming_it(dataset, tmp_path, capsys):
    from twotower.jobs import train as train_job

    p = train_job.argparse.ArgumentParser()
    train_job.configure(p)
    cfg = train_job.build_config(p.parse_args(["--dataset", "d", "--skip-bad-files", "--max-failures", "2"]))
    assert cfg.skip_bad_files and cfg.max_failures == 2
    assert not train_job.build_config(p.parse_args(["--dataset", "d"])).skip_bad_files
    bad = _part(dataset, 0)
    _damage(bad, "garbage")
    assert train_job.main(["--dataset", str(dataset), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert f"twotower train: error: {bad}: not a readable parquet file" in err


def test_index_job_item_check_names_the_file(dataset, tmp_path):
    assert check_item_files([str(dataset / "items.parquet")]) == pq.ParquetFile(dataset / "items.parquet"
                                                                               ).metadata.num_rows
    bad = tmp_path / "items" / "part-1.parquet"
    bad.parent.mkdir()
    shutil.copy(dataset / "items.parquet", bad.parent / "part-0.parquet")
    shutil.copy(dataset / "items.parquet", bad)
    _damage(bad, "truncated")
    with pytest.raises(DataFormatError, match="item catalogue: not a readable parquet file") as info:
        check_item_files([str(dataset / "items.parquet"), str(bad.parent)])
    assert info.value.path == str(bad)
    pq.write_table(pq.read_table(bad.parent / "part-0.parquet").drop_columns(["item_id"]), bad)
    with pytest.raises(DataFormatError, match="missing column 'item_id'"):
        check_item_files([str(bad)])
    with pytest.raises(FileNotFoundError, match="no such item parquet"):
        check_item_files([str(tmp_path / "nope.parquet")])


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_skip_bad_files_trains_on_the_rest_and_records_them_all_on_s3(ray_cluster, s3_store, dataset, tmp_path,
                                                                        caplog, monkeypatch):
    _damage(_part(dataset, 1), "garbage")
    _damage(_part(dataset, 2), "missing_column")
    good_valid_rows = read_events_metadata(pq.read_schema(_part(dataset, 0)).metadata)["valid"]
    uri, runs = f"{s3_store}/skip-bad/dataset", f"{s3_store}/skip-bad/runs"
    storage.upload_dir(dataset, uri, last="schema.json")
    bad_garbage, bad_column = f"{uri}/sequences/part-00001.parquet", f"{uri}/sequences/part-00002.parquet"
    monkeypatch.chdir(tmp_path)                                  # nothing may land in the working directory
    with caplog.at_level(logging.WARNING, logger="twotower.distributed.trainer"):
        result = TwoTowerTrainer(_config(tmp_path, skip_bad_files=True, storage_path=runs)).fit(uri)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(bad_garbage in w and "not a readable parquet file" in w for w in warnings)
    assert any(bad_column in w and "missing column 'seen_before'" in w for w in warnings)
    assert result.metrics["valid_count"] == good_valid_rows > 0  # the skipped files' queries are not ranked
    assert {b["path"] for b in result.skipped_files} == {bad_garbage, bad_column}

    # the run lives in the bucket: Ray Train's epoch checkpoint and every artifact, nothing local
    assert result.run_dir == f"{runs}/bad" and result.best_checkpoint == f"{runs}/bad/best_checkpoint"
    files = storage.list_files(result.run_dir)
    assert {"summary.json", "metrics.csv", "config.yaml", "training_curves.png", "best_checkpoint/model.pt",
            "epoch_0001/model.pt"} <= set(files), files
    summary = json.loads(storage.read_text(f"{runs}/bad/summary.json"))
    assert summary["skipped_files"] == result.skipped_files and summary["dataset_dir"] == uri
    assert summary["best_checkpoint"] == result.best_checkpoint
    assert storage.read_text(f"{runs}/bad/metrics.csv").splitlines()[1].startswith("1,")
    loaded = load_checkpoint(result.best_checkpoint)
    assert loaded.meta["dataset_dir"] == uri and loaded.meta["epoch"] == 1
    assert storage.sha256(f"{runs}/bad/best_checkpoint/model.pt") == storage.sha256(f"{runs}/bad/epoch_0001/model.pt")
    assert list(tmp_path.iterdir()) == [tmp_path / "dataset"]


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_bad_data_page_fails_the_run_naming_the_file(ray_cluster, dataset, tmp_path):
    bad = _part(dataset, 1)
    _damage(bad, "bad_page")
    with pytest.raises(DataFormatError, match="corrupt data page") as info:
        TwoTowerTrainer(_config(tmp_path, skip_bad_files=True)).fit(dataset)   # footer is fine: not skipped
    assert info.value.path == str(bad)
    assert info.value.__cause__ is not None                      # chained to the failure Ray reported
