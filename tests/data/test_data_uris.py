"""``prepare`` with URIs on a real S3 server (``s3_store``): raw files read from ``s3://``, the prepared
dataset written to ``s3://`` equal to the local one; failures leave nothing behind and name the URI."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from test_data_prepare import write_tiny
from twotower.data.errors import DataFormatError
from twotower.data.tables import load_feature_tables
from twotower.distributed.sources import prepare_movielens, prepare_synthetic
from twotower import storage
from twotower.model.schema import DatasetSchema

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(300)]


def _assert_same_dataset(uri: str, local) -> None:
    """Same files, same schema, equal feature tables and equal sequence files (stats.json: its paths differ)."""
    local_files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert storage.list_files(uri) == local_files
    assert DatasetSchema.load(uri) == DatasetSchema.load(local)
    for remote_table, local_table in zip(load_feature_tables(uri), load_feature_tables(local)):
        assert remote_table.keys() == local_table.keys()
        for name in local_table:
            np.testing.assert_array_equal(remote_table[name], local_table[name], err_msg=name)
    fs, _ = storage.resolve(uri)
    for rel in (f for f in local_files if f.startswith("sequences/")):
        assert pq.read_table(storage.resolve(f"{uri}/{rel}")[1], filesystem=fs).equals(pq.read_table(local / rel)), rel


def test_synthetic_prepared_to_s3_equals_local(s3_store, tmp_path):
    args = dict(users=300, items=80, interactions=5000, seed=3, history_length=8, block_rows=1500)
    uri = f"{s3_store}/prepare/synthetic"
    prepare_synthetic(uri, **args)
    prepare_synthetic(tmp_path / "synthetic", **args)
    _assert_same_dataset(uri, tmp_path / "synthetic")
    assert len(storage.files_with_suffix(f"{uri}/sequences", ".parquet")) == 4      # 5000 rows / 1500 per block
    with pytest.raises(FileExistsError, match=rf"{uri} already exists and is not empty"):
        prepare_synthetic(uri, **args)
    prepare_synthetic(uri, **{**args, "users": 200}, overwrite=True)       # replaces: no file of the old one left
    assert DatasetSchema.load(uri).num_users == 201
    assert json.loads(storage.read_text(f"{uri}/stats.json"))["users"] == 200


def test_movielens_raw_files_from_s3_to_s3(s3_store, tmp_path):
    src = write_tiny(tmp_path / "raw")
    storage.upload_dir(src, f"{s3_store}/raw/tiny")
    out = f"{s3_store}/prepare/tiny"
    stats = prepare_movielens(out, "ml-100k", src=f"{s3_store}/raw/tiny")
    prepare_movielens(tmp_path / "tiny", "ml-100k", src=src)
    _assert_same_dataset(out, tmp_path / "tiny")
    assert stats["rows"] == {"train": 5, "valid": 1, "test": 1}
    assert json.loads(storage.read_text(f"{out}/stats.json"))["source"] == f"{s3_store}/raw/tiny"


def test_bad_raw_file_on_s3_is_named_by_uri_and_nothing_is_written(s3_store, tmp_path):
    src = write_tiny(tmp_path / "raw")
    with (src / "u.data").open("a") as f:
        f.write("3\tforty\t5\t20\n")                                      # line 8: item id not an integer
    storage.upload_dir(src, f"{s3_store}/raw/bad")
    out = f"{s3_store}/prepare/from-bad"
    with pytest.raises(DataFormatError) as info:
        prepare_movielens(out, "ml-100k", src=f"{s3_store}/raw/bad")
    assert info.value.path == f"{s3_store}/raw/bad/u.data" and info.value.line == 8
    assert str(info.value).startswith(f"{s3_store}/raw/bad/u.data line 8: ")
    assert not storage.exists(out)
