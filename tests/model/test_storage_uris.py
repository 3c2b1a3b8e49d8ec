"""Checkpoints, schemas and the storage helpers on a real S3 server (``s3_store``, moto on 127.0.0.1):
what is read from ``s3://`` equals what was written, and errors name the URI, not a temporary copy."""
from __future__ import annotations

import pytest
import torch

from twotower import storage
from twotower.model.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_meta, save_checkpoint
from twotower.model.config import ModelConfig
from twotower.model.schema import DatasetSchema, SchemaError
from twotower.model.twotower import TwoTowerModel


@pytest.fixture
def s3_checkpoint(s3_store, tmp_path, toy_schema, toy_tables, request):
    """A checkpoint saved locally, uploaded to ``s3://.../<test name>/ck``; yields (uri, local path, model)."""
    model = TwoTowerModel(toy_schema, ModelConfig(), *toy_tables)
    local = save_checkpoint(model, tmp_path / "ck", epoch=3, optimizer_state={"step": torch.tensor(7)})
    uri = f"{s3_store}/{request.node.name}/ck"
    storage.upload_dir(local, uri, last="checkpoint.json")
    return uri, local, model


def test_checkpoint_loads_from_s3_equal_to_local(s3_checkpoint):
    uri, local, model = s3_checkpoint
    assert storage.list_files(uri) == ["checkpoint.json", "model.pt", "optimizer.pt"]
    assert read_checkpoint_meta(uri) == read_checkpoint_meta(local)
    loaded = load_checkpoint(uri)
    assert loaded.meta["epoch"] == 3 and int(loaded.optimizer_state["step"]) == 7
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name


def test_tampered_or_missing_s3_checkpoint_names_the_uri(s3_checkpoint):
    uri, _, _ = s3_checkpoint
    storage.write_bytes(storage.join(uri, "model.pt"), b"tampered")
    with pytest.raises(CheckpointError, match=rf"^{uri}/model.pt: sha256 mismatch"):
        load_checkpoint(uri)
    with pytest.raises(CheckpointError, match=rf"^{uri}-missing/checkpoint.json: missing"):
        load_checkpoint(f"{uri}-missing")
    storage.write_bytes(storage.join(uri, "checkpoint.json"), b"{not json")
    with pytest.raises(CheckpointError, match=rf"^{uri}/checkpoint.json: not valid JSON"):
        read_checkpoint_meta(uri)


def test_schema_from_s3_and_missing_schema_error(s3_store, toy_schema):
    base = f"{s3_store}/schema-test"
    storage.write_bytes(f"{base}/ds/schema.json", toy_schema.to_json().encode())
    assert DatasetSchema.load(f"{base}/ds") == toy_schema
    assert DatasetSchema.load(f"{base}/ds/schema.json") == toy_schema
    with pytest.raises(SchemaError, match=rf"^{base}/nothing/schema.json: no schema.json"):
        DatasetSchema.load(f"{base}/nothing")


def test_storage_helpers_on_s3(s3_store, tmp_path):
    base = f"{s3_store}/helpers"
    (tmp_path / "src" / "sub").mkdir(parents=True)
    for rel, data in {"a.parquet": b"a", "b.parquet": b"bb", "_SUCCESS.parquet": b"", ".c.parquet": b"",
                      "notes.txt": b"n", "sub/d.parquet": b"d"}.items():
        (tmp_path / "src" / rel).write_bytes(data)
    storage.upload_dir(tmp_path / "src", f"{base}/dir")
    assert storage.list_files(f"{base}/dir") == sorted(
        ["a.parquet", "b.parquet", "_SUCCESS.parquet", ".c.parquet", "notes.txt", "sub/d.parquet"])
    # direct children with the suffix only; hidden / underscore files skipped (Spark/Hive markers)
    assert storage.files_with_suffix(f"{base}/dir", ".parquet") == [f"{base}/dir/a.parquet", f"{base}/dir/b.parquet"]
    assert storage.files_with_suffix(f"{base}/absent", ".parquet") == []
    assert storage.read_bytes(f"{base}/dir/b.parquet") == b"bb"
    assert storage.is_dir(f"{base}/dir") and storage.is_file(f"{base}/dir/a.parquet")
    assert not storage.is_file(f"{base}/dir") and not storage.exists(f"{base}/absent")
    assert storage.parent(f"{base}/dir/a.parquet") == f"{base}/dir"
    assert storage.normalize(f"{base}/dir") == f"{base}/dir"
    assert storage.normalize("rel/x") == str(tmp_path.cwd() / "rel" / "x")
    assert storage.is_uri(base) and not storage.is_uri(tmp_path)


def test_read_json_names_the_file_for_missing_invalid_and_non_utf8(tmp_path):
    from twotower.index.manifest import IndexFormatError, Manifest
    from twotower.serve.user_cache import UserCacheError, load_user_cache

    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert storage.read_json(tmp_path / "ok.json", ValueError, "missing") == {"a": 1}
    with pytest.raises(ValueError, match=r"nope\.json: missing"):
        storage.read_json(tmp_path / "nope.json", ValueError, "missing")
    for name, raw in (("manifest", b"{not json"), ("latin", b'{"a": "\xe9"}')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_bytes(raw)
        with pytest.raises(IndexFormatError, match=rf"{name}/manifest.json: not valid JSON"):
            Manifest.read(str(tmp_path / name))
    (tmp_path / "cache").mkdir()                     # a user cache whose meta file is not JSON: named, no traceback
    (tmp_path / "cache" / "user_cache.json").write_text("{")
    with pytest.raises(UserCacheError, match=r"cache/user_cache.json: not valid JSON"):
        load_user_cache(str(tmp_path / "cache"), None, None)
