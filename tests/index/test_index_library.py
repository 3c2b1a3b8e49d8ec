"""twotower.index without Ray: manifest round trip, documented errors, exact merge, ties, exclusion, URIs."""
from __future__ import annotations

import json
import os

import faiss
import numpy as np
import pytest

from twotower.index import (IndexBuildError, IndexFormatError, Manifest, ShardedIndex, ann_rank_scores,
                            build_local_index, exact_topk, flat_index, index_recall, shard_of)
from twotower import storage

D = 16


@pytest.fixture(scope="module")
def catalogue():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((600, D)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    idx = np.arange(1, 601, dtype=np.int64)
    return emb, idx, [f"item-{i}" for i in idx], rng.standard_normal((50, D)).astype(np.float32)


@pytest.fixture
def flat3(tmp_path, catalogue):
    emb, idx, ids, _ = catalogue
    out = tmp_path / "flat3"
    build_local_index(out, emb, idx, ids, factory="Flat", num_shards=3, checkpoint={"model_sha256": "abc"})
    return out


def test_manifest_round_trip(flat3, catalogue):
    m = Manifest.read(str(flat3))
    assert Manifest.from_dict(json.loads(m.to_json())).to_json() == m.to_json()
    assert (m.format_version, m.dim, m.metric, m.factory, m.num_items) == (1, D, "inner_product", "Flat", 600)
    assert [s.shard for s in m.shards] == [0, 1, 2] and sum(s.count for s in m.shards) == 600
    assert set(m.files) == {f for s in m.shards for f in (s.index_file, s.ids_file)}
    assert m.partition["num_shards"] == 3 and m.checkpoint == {"model_sha256": "abc"} and m.created_at
    for name, digest in m.files.items():
        assert storage.sha256(flat3 / name) == digest
    index = ShardedIndex.load(flat3)
    assert (index.dim, index.num_items, index.num_shards, index.exact) == (D, 600, 3, True)
    counts = np.bincount(shard_of(catalogue[2], 3), minlength=3)          # stable hash partition
    assert [s.count for s in m.shards] == counts.tolist()
    assert index.item_ids(np.array([[1, 600, -1]])).tolist() == [["item-1", "item-600", None]]
    one = ShardedIndex.load(flat3, shards=[2])                             # a single shard (one searcher)
    assert (one.num_shards, one.num_items) == (1, m.shards[2].count)
    assert (one.manifest.extra["index_num_items"], one.manifest.extra["index_num_shards"]) == (600, 3)
    with pytest.raises(IndexFormatError, match="no shard 3"):
        ShardedIndex.load(flat3, shards=[3])
    index.verify_checkpoint("abc")
    with pytest.raises(IndexFormatError, match="sha256"):
        index.verify_checkpoint("other")


def test_search_params_stored_and_applied(tmp_path, catalogue):
    emb, idx, ids, _ = catalogue
    build_local_index(tmp_path / "ivf", emb, idx, ids, factory="IVF8,Flat", num_shards=2, nprobe=3)
    m = Manifest.read(str(tmp_path / "ivf"))
    assert m.search_params == {"nprobe": 3}
    raw = faiss.read_index(str(tmp_path / "ivf" / m.shards[0].index_file))
    assert faiss.extract_index_ivf(raw).nprobe == 3                       # stored in the shard file too
    index = ShardedIndex.load(tmp_path / "ivf", search_params={"nprobe": 8})
    assert all(faiss.extract_index_ivf(s).nprobe == 8 for s in index._shards)
    assert index_recall(index, (emb, idx), catalogue[3], 10) == 1.0       # nprobe = nlist: exhaustive
    build_local_index(tmp_path / "hnsw", emb, idx, ids, factory="HNSW8", num_shards=1)
    assert Manifest.read(str(tmp_path / "hnsw")).search_params == {"efSearch": 128}


def test_flat_search_equals_numpy_and_exclusion_keeps_k(flat3, catalogue):
    emb, idx, _, queries = catalogue
    index = ShardedIndex.load(flat3)
    scores, items = index.search(queries, 10)
    full = queries @ emb.T
    for r in range(len(queries)):
        order = np.lexsort((idx, -full[r]))[:10]
        assert items[r].tolist() == idx[order].tolist()
        np.testing.assert_allclose(scores[r], full[r, order], rtol=1e-5, atol=1e-6)
    exclude = [items[r, :7] for r in range(len(queries))]                  # drop 7 of each top 10
    s2, i2 = index.search(queries, 10, exclude=exclude)
    assert (i2 >= 0).all() and not any(np.isin(i2[r], exclude[r]).any() for r in range(len(queries)))
    np.testing.assert_array_equal(i2, exact_topk(emb, queries, 10, item_idx=idx, exclude=exclude)[1])
    assert index_recall(index, index, queries, 10, exclude=exclude) == 1.0   # exact index as reference
    s_all, i_all = index.search(queries[:2], 700)                          # k > catalogue: padded
    assert (i_all[:, :600] >= 0).all() and (i_all[:, 600:] == -1).all() and np.isneginf(s_all[:, 600:]).all()


def test_ties_broken_by_item_idx_across_shards(tmp_path):
    emb = np.zeros((40, 4), np.float32)
    emb[:, 1] = 0.1
    emb[:30, 0] = 1.0                                                      # items 1..30 tie, 31..40 lower
    idx = np.arange(1, 41)
    build_local_index(tmp_path / "ties", emb, idx, [f"x{i}" for i in idx], num_shards=3)
    index = ShardedIndex.load(tmp_path / "ties")
    q = np.tile(np.array([[1.0, 0.0, 0.0, 0.0]], np.float32), (25, 1))   # >= 20 rows: FAISS BLAS path
    for k in (1, 5, 12):
        _, items = index.search(q, k)
        assert (items == np.arange(1, k + 1)).all()
        _, items = index.search(q[:1], k, exclude=[[2, 3]])
        assert items[0].tolist() == [i for i in range(1, k + 3) if i not in (2, 3)][:k]
        # the exact twin orders the same ties the same way (item rows shuffled: not by position)
        perm = np.random.default_rng(k).permutation(40)
        _, exact = exact_topk(emb[perm], q, k, item_idx=idx[perm], exclude=[[2, 3]] * len(q))
        assert (exact == [i for i in range(1, k + 3) if i not in (2, 3)][:k]).all()


def test_in_memory_flat_index_equals_loaded_flat_shards(flat3, catalogue, tmp_path):
    emb, idx, ids, queries = catalogue
    mem, disk = flat_index(emb, idx, ids, checkpoint={"model_sha256": "abc"}), ShardedIndex.load(flat3)
    assert (mem.num_shards, mem.num_items, mem.exact, mem.path) == (1, 600, True, "")
    mem.verify_checkpoint("abc")
    exclude = [idx[r:r + 40:3] for r in range(len(queries))]
    for q, k, ex in ((queries, 10, None), (queries[:3], 25, exclude[:3]), (queries, 50, exclude)):
        got, want = mem.search(q, k, exclude=ex), disk.search(q, k, exclude=ex)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    assert mem.item_ids(np.array([5, -1])).tolist() == ["item-5", None]
    ties = np.zeros((40, 4), np.float32)
    ties[:30, 0] = 1.0                                                     # items 1..30 tie at the cut-off
    tied = flat_index(ties, np.arange(40, 0, -1), [f"x{i}" for i in range(40)])
    for n in (1, 25):                                                      # FAISS's direct and BLAS paths
        _, items = tied.search(np.tile([[1.0, 0, 0, 0]], (n, 1)), 12, exclude=[[11, 13]] * n)
        assert (items == [12] + list(range(14, 25))).all()    # rows hold 40..11 (tied): ascending item_idx
    with pytest.raises(ValueError, match="unknown item"):
        flat_index(emb[:2], [0, 1], ["a", "b"])


def test_ann_rank_scores_orders_retrieved_first(flat3, catalogue):
    emb, idx, _, queries = catalogue
    index = ShardedIndex.load(flat3)
    scores = ann_rank_scores(index, queries, num_items=601, depth=20)
    assert scores.shape == (50, 601) and scores.dtype == np.float32
    _, top = index.search(queries, 20)
    for r in range(len(queries)):
        assert np.argsort(-scores[r], kind="stable")[:20].tolist() == top[r].tolist()
        assert (np.delete(scores[r], top[r]) < scores[r, top[r]].min()).all()
    base = np.c_[np.zeros((50, 1), np.float32), queries @ emb.T]
    with_base = ann_rank_scores(index, queries, num_items=601, depth=20, base_scores=base)
    assert (np.argsort(-with_base, axis=1)[:, :40] == np.argsort(-base, axis=1)[:, :40]).all()


def test_missing_or_corrupted_files_raise(flat3):
    m = Manifest.read(str(flat3))
    index_file = flat3 / m.shards[1].index_file
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=r"shard-00001\.faiss: sha256 mismatch"):
        ShardedIndex.load(flat3)
    with pytest.raises(IndexFormatError, match=r"shard-00001\.faiss: sha256 mismatch"):
        m.verify_files(str(flat3))                                         # full check, all listed files
    index_file.write_bytes(bytes(data[:100]))                              # truncated, not verified
    with pytest.raises(IndexFormatError, match=r"shard-00001\.faiss: not a readable FAISS index"):
        ShardedIndex.load(flat3, verify=False)
    index_file.unlink()
    with pytest.raises(IndexFormatError, match=r"shard-00001\.faiss: missing"):
        ShardedIndex.load(flat3)
    with pytest.raises(IndexFormatError, match=r"shard-00001\.faiss: missing"):
        ShardedIndex.load(flat3, verify=False)
    (flat3 / m.shards[0].ids_file).unlink()
    with pytest.raises(IndexFormatError, match=r"shard-00000\.ids\.parquet: missing"):
        ShardedIndex.load(flat3)
    (flat3 / "manifest.json").unlink()
    with pytest.raises(IndexFormatError, match="manifest.json: missing"):
        ShardedIndex.load(flat3)


def _edit_manifest(path, **changes):
    d = json.loads((path / "manifest.json").read_text())
    d.update(changes)
    (path / "manifest.json").write_text(json.dumps(d))


def test_dimension_mismatch_raises(flat3, catalogue):
    with pytest.raises(ValueError, match=rf"queries must have shape \(n, {D}\)"):
        ShardedIndex.load(flat3).search(np.zeros((2, D + 1), np.float32), 5)
    _edit_manifest(flat3, dim=D + 8)
    with pytest.raises(IndexFormatError, match=rf"shard-00000\.faiss: dimension {D} does not match .* {D + 8}"):
        ShardedIndex.load(flat3)


@pytest.mark.parametrize("change, message", [
    ({"format_version": 99}, "format_version 99 is not supported"),
    ({"metric": "l2"}, "metric 'l2' is not supported"),
    ({"num_items": 5}, "shard counts sum to 600"),
    ({"shards": []}, "shards must be numbered"),
])
def test_bad_manifest_raises(flat3, change, message):
    _edit_manifest(flat3, **change)
    with pytest.raises(IndexFormatError, match=message):
        ShardedIndex.load(flat3)


def test_failed_build_leaves_nothing(tmp_path, catalogue):
    emb, idx, ids, _ = catalogue
    with pytest.raises(IndexBuildError, match="fewer than nlist=512"):
        build_local_index(tmp_path / "bad", emb, idx, ids, factory="IVF512,Flat", num_shards=2)
    with pytest.raises(IndexBuildError, match="PQ5 needs a dimension divisible by 5"):
        build_local_index(tmp_path / "bad", emb, idx, ids, factory="IVF4,PQ5")
    with pytest.raises(IndexBuildError, match="item_idx 7 occurs more than once"):
        build_local_index(tmp_path / "bad", emb[:10], np.r_[idx[:9], 7], ids[:10])
    assert os.listdir(tmp_path) == []                                      # no output, no staging dir
    build_local_index(tmp_path / "ok", emb, idx, ids)
    with pytest.raises(FileExistsError):
        build_local_index(tmp_path / "ok", emb, idx, ids)
    build_local_index(tmp_path / "ok", emb[:10], idx[:10], ids[:10], overwrite=True)
    assert ShardedIndex.load(tmp_path / "ok").num_items == 10 and os.listdir(tmp_path) == ["ok"]


def test_uri_paths_and_copy_publish(tmp_path, catalogue):
    emb, idx, ids, queries = catalogue
    uri = f"file://{tmp_path}/via-uri"
    build_local_index(uri, emb, idx, ids, num_shards=2)
    index = ShardedIndex.load(uri)
    assert index.search(queries, 5)[1].tolist() == exact_topk(emb, queries, 5, item_idx=idx)[1].tolist()
    fs, src = storage.resolve(uri)                                         # object-store style publish
    storage.copy_publish(fs, src, f"{tmp_path}/copied")
    assert not os.path.exists(src) and ShardedIndex.load(tmp_path / "copied").num_items == 600
