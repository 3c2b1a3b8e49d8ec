"""The Ray index job on ML-100K (real Ray, real FAISS): embeddings, exact sharded search, IVF recall, CLI."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from twotower.index import Manifest, ShardedIndex, index_recall, shard_of
from twotower.model.checkpoint import read_checkpoint_meta

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def flat_indexes(ray_cluster, ml100k_checkpoint, ml100k_dataset, tmp_path_factory):
    """Flat indexes of the ML-100K catalogue built by the Ray job: S = 3 end to end (Ray Data embedding,
    batches of 500 items), then S = 1 from those embeddings (re-partitioned, no second embedding run)."""
    from twotower.distributed.index_job import IndexJobConfig, run_index_job
    root = tmp_path_factory.mktemp("index-job")
    out = {3: root / "flat-3", 1: root / "flat-1"}
    run_index_job(IndexJobConfig(checkpoint=str(ml100k_checkpoint), out=str(out[3]), dataset=str(ml100k_dataset),
                                 num_shards=3, factory="Flat", batch_size=500))
    run_index_job(IndexJobConfig(checkpoint=str(ml100k_checkpoint), out=str(out[1]), num_shards=1, factory="Flat",
                                 embeddings=str(out[3] / "embeddings")))
    return out


@pytest.mark.timeout(300)
def test_embeddings_equal_item_tower(flat_indexes, ml100k_item_embeddings, ml100k_dataset):
    table = pads.dataset(flat_indexes[3] / "embeddings", format="parquet", partitioning="hive").to_table()
    idx = table["item_idx"].to_numpy()
    emb = table["embedding"].combine_chunks().flatten().to_numpy().reshape(len(idx), -1)
    assert emb.dtype == np.float32 and emb.shape == (1682, 32)
    assert sorted(idx.tolist()) == list(range(1, 1683))                   # every item once, never item 0
    np.testing.assert_allclose(emb, ml100k_item_embeddings[idx], rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)   # model L2-normalises
    items = pq.read_table(ml100k_dataset / "items.parquet").to_pandas().set_index("item_idx")
    assert table["item_id"].to_pylist() == items.loc[idx, "item_id"].tolist()
    assert (table["shard"].to_numpy() == shard_of(table["item_id"].to_pylist(), 3)).all()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("shards", [1, 3])
def test_sharded_flat_equals_brute_force(flat_indexes, shards, ml100k_item_embeddings, ml100k_queries, brute_force):
    queries, seen = ml100k_queries
    index = ShardedIndex.load(flat_indexes[shards])
    assert index.num_shards == shards and index.num_items == 1682 and index.exact
    full = queries @ ml100k_item_embeddings.T
    for k, exclude in ((10, None), (100, None), (10, seen)):               # seen items out, still k results
        scores, items = index.search(queries, k, exclude=exclude)
        ref_s, ref_i = brute_force(ml100k_item_embeddings, queries, k, exclude=exclude)
        assert (items > 0).all()
        assert_same_topk(items, scores, ref_i, ref_s, full)
    scores, items = index.search(queries[:1], 10)                          # batch-1 path (threaded shards)
    assert_same_topk(items, scores, *brute_force(ml100k_item_embeddings, queries[:1], 10)[::-1], full[:1])


def assert_same_topk(items, scores, ref_i, ref_s, full, tol=1e-6):
    """Equal ids at every position, except swaps of items whose NumPy scores differ by < tol: FAISS's BLAS
    and NumPy round float32 dot products differently (observed: 2 of 94,300 positions at k=100)."""
    np.testing.assert_allclose(scores, ref_s, rtol=0, atol=tol)
    rows, cols = np.nonzero(items != ref_i)
    gap = np.abs(full[rows, items[rows, cols]] - ref_s[rows, cols])
    assert (gap <= tol).all(), f"{len(rows)} positions differ, largest score gap {gap.max()}"
    assert len(rows) <= items.size // 1000


@pytest.mark.timeout(300)
def test_job_manifest(flat_indexes, ml100k_checkpoint):
    m = Manifest.read(str(flat_indexes[3]))
    meta = read_checkpoint_meta(ml100k_checkpoint)
    assert m.checkpoint["model_sha256"] == meta["sha256"]["model.pt"]
    assert (m.dim, m.factory, m.num_items, m.normalized, m.metric) == (32, "Flat", 1682, True, "inner_product")
    assert [s.count for s in m.shards] == np.bincount(
        shard_of(ShardedIndex.load(flat_indexes[3]).item_ids(np.arange(1, 1683)), 3)).tolist()
    assert any(f.startswith("embeddings/shard=") for f in m.files)          # embeddings kept and checksummed
    assert m.extra["job"]["embed"]["rows"] == 1682
    assert not [p for p in os.listdir(flat_indexes[3].parent) if ".tmp-" in p]   # staging dirs removed


@pytest.mark.timeout(300)
def test_ivf_cli_default_params_recall(flat_indexes, ml100k_checkpoint, ml100k_item_embeddings, ml100k_queries,
                                       tmp_path, capsys):
    from twotower.jobs.index import main
    out = tmp_path / "ivf"
    args = ["--checkpoint", str(ml100k_checkpoint), "--embeddings", str(flat_indexes[3] / "embeddings"),
            "--out", str(out), "--shards", "3", "--factory", "IVF16,Flat", "-q"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_items"] == 1682 and summary["search_params"] == {"nprobe": 8}
    index = ShardedIndex.load(out)
    assert not index.exact and not any(f.startswith("embeddings/") for f in index.manifest.files)
    queries, seen = ml100k_queries
    recall = index_recall(index, ml100k_item_embeddings, queries, 10)
    assert recall >= 0.95, recall
    assert index_recall(index, ml100k_item_embeddings, queries, 10, exclude=seen) >= 0.95
    assert main(args) == 2                                                 # exists, no --overwrite
    bad = args[:3] + [str(tmp_path)] + args[4:] + ["--overwrite"]
    assert main(bad) == 2                                                  # not an embeddings directory


@pytest.mark.timeout(300)
def test_failed_job_leaves_no_index(flat_indexes, ml100k_checkpoint, tmp_path):
    from twotower.distributed.index_job import IndexJobConfig, run_index_job
    out = tmp_path / "too-many-lists"
    with pytest.raises(Exception, match="fewer than nlist=4096"):
        run_index_job(IndexJobConfig(checkpoint=str(ml100k_checkpoint), out=str(out), num_shards=3,
                                     factory="IVF4096,Flat", embeddings=str(flat_indexes[3] / "embeddings")))
    assert os.listdir(tmp_path) == []                                      # neither OUT nor a staging dir
    assert ShardedIndex.load(flat_indexes[3]).num_items == 1682            # reused embeddings untouched


@pytest.mark.timeout(300)
def test_evaluate_through_the_index(flat_indexes, ml100k_checkpoint, ml100k_dataset, tmp_path, capsys):
    """`twotower evaluate --index`: ranking through an exact (Flat) index gives the brute-force metrics
    and index recall 1.0; an index of another checkpoint is refused with exit code 2."""
    from twotower.jobs.evaluate import main

    out = tmp_path / "eval.json"
    args = ["--checkpoint", str(ml100k_checkpoint), "--dataset", str(ml100k_dataset), "--split", "test",
            "--ks", "10", "20", "--index", str(flat_indexes[3]), "--out", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    for k in ("recall@10", "ndcg@10", "recall@20", "ndcg@20"):
        assert abs(result["index"][k] - result["model"][k]) < 1e-9, k
    assert result["index_recall@20"] > 0.999
    assert "via index" in capsys.readouterr().out

    foreign = tmp_path / "foreign"
    shutil.copytree(ml100k_checkpoint, foreign)
    meta = json.loads((foreign / "checkpoint.json").read_text())
    import torch
    state = torch.load(foreign / "model.pt", weights_only=True)
    state[next(k for k, v in state.items() if v.is_floating_point())] += 1.0
    torch.save(state, foreign / "model.pt")
    from twotower.model.checkpoint import sha256_file
    meta["sha256"]["model.pt"] = sha256_file(foreign / "model.pt")
    (foreign / "checkpoint.json").write_text(json.dumps(meta))
    assert main(args[:1] + [str(foreign)] + args[2:]) == 2
    assert "checkpoint" in capsys.readouterr().err


@pytest.mark.timeout(300)
def test_other_model_embeddings_or_dataset_exit_2(ml100k_checkpoint, ml100k_dataset, tmp_path, capsys):
    """Checked before Ray is needed: reused embeddings compare model sha256s like every index check, and
    a dataset goes through the one checkpoint-vs-dataset check."""
    from twotower.jobs.index import main
    stale = tmp_path / "embeddings"
    stale.mkdir()
    (stale / "_embeddings.json").write_text(json.dumps({"num_shards": 1, "model_sha256": "0" * 64}))
    assert main(["--checkpoint", str(ml100k_checkpoint), "--embeddings", str(stale), "--out",
                 str(tmp_path / "out"), "-q"]) == 2
    assert "_embeddings.json: built from checkpoint model sha256 0000" in capsys.readouterr().err
    other = tmp_path / "other"                               # only its schema.json is read before the check
    other.mkdir()
    schema = json.loads((ml100k_dataset / "schema.json").read_text())
    (other / "schema.json").write_text(json.dumps({**schema, "history_length": schema["history_length"] + 1}))
    assert main(["--checkpoint", str(ml100k_checkpoint), "--dataset", str(other), "--out", str(tmp_path / "out"),
                 "-q"]) == 2
    assert f"was trained on history_length {schema['history_length']}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
