"""Serving logic without Ray: context resolution, user state, encoding, shard merge, fan-out, pipeline."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from twotower.data.features import context_features
from twotower.data.splits import read_split_examples
from twotower.index import ShardedIndex, build_local_index, merge_topk
from twotower.model.schema import DatasetSchema
from twotower.serve.catalogue import Catalogue
from twotower.serve.context import context_vocabs, resolve_context
from twotower.serve.fanout import ShardsUnavailable, search_all
from twotower.serve.http import validation_message
from twotower.serve.query import QueryEncoder, QueryInput
from twotower.serve.offline import Recommender
from twotower.serve.recommender import ServingState, rerank_merge
from twotower.serve.schema import RecommendRequest, RequestError, SimilarItemsRequest
from twotower.serve.shards import SearchRequest, SearchResult, ShardStore
from twotower.serve.user_cache import UserCacheError, build_user_cache, load_user_cache, save_user_cache
from twotower.serve.user_state import UserState

TS = 880_000_000


@pytest.fixture(scope="module")
def schema(ml100k_dataset) -> DatasetSchema:
    return DatasetSchema.load(ml100k_dataset)


@pytest.fixture(scope="module")
def users(ml100k_dataset, schema) -> UserState:
    return UserState.load(ml100k_dataset, schema)


@pytest.fixture(scope="module")
def catalogue(ml100k_dataset) -> Catalogue:
    return Catalogue.load(ml100k_dataset)


def untrained(dataset: Path, mode: str, seed: int = 0):
    from twotower.data.tables import load_feature_tables
    from twotower.model.config import ModelConfig
    from twotower.model.twotower import TwoTowerModel
    torch.manual_seed(seed)
    cfg = ModelConfig(context_mode=mode, final_embedding_dim=16, hidden_dims=[32], dropout=0.0, rerank_depth=20)
    model = TwoTowerModel(DatasetSchema.load(dataset), cfg, *load_feature_tables(dataset)).eval()
    if mode != "user_tower":
        torch.nn.init.normal_(model.context_projection.weight, std=1.0)   # a visible context effect
    return model


# ---- context -----------------------------------------------------------------------------------------
def test_context_from_timestamp_named_fields_and_overrides(schema, ml100k_dataset):
    derived = context_features(np.array([TS]))
    got = resolve_context({"timestamp": TS}, schema)
    assert got == {k: derived[k][0].item() for k in got} and list(got) == [f.name for f in schema.context_features]
    vocabs = context_vocabs(schema, ml100k_dataset)
    named = resolve_context({"hour_sin": 0, "hour_cos": -1.0, "day_of_week": "Saturday", "is_weekend": True},
                            schema, vocabs)
    assert named == {"hour_sin": 0.0, "hour_cos": -1.0, "day_of_week": 6, "is_weekend": 1.0}
    assert resolve_context({"timestamp": TS, "day_of_week": 7}, schema)["day_of_week"] == 7
    assert resolve_context(None, schema, now=TS) == got


@pytest.mark.parametrize("context, field", [
    ({"hour_of_day": 3}, "context.hour_of_day"),
    ({"timestamp": TS, "hour_sin": "high"}, "context.hour_sin"),
    ({"timestamp": TS, "hour_sin": float("nan")}, "context.hour_sin"),
    ({"timestamp": TS, "day_of_week": 8}, "context.day_of_week"),
    ({"timestamp": TS, "day_of_week": 2.5}, "context.day_of_week"),
    ({"timestamp": TS, "day_of_week": "Funday"}, "context.day_of_week"),
    ({"timestamp": "yesterday"}, "context.timestamp"),
    ({"timestamp": -5}, "context.timestamp"),
    ({"hour_sin": 0.5, "hour_cos": 0.5, "day_of_week": 1}, "context.is_weekend"),
])
def test_context_errors_name_the_field(schema, ml100k_dataset, context, field):
    with pytest.raises(RequestError) as e:
        resolve_context(context, schema, context_vocabs(schema, ml100k_dataset))
    assert e.value.field == field and field in str(e.value)


# ---- request models ----------------------------------------------------------------------------------
@pytest.mark.parametrize("body, field", [
    ({"user_id": "1", "k": 0}, "k"), ({"user_id": "1", "k": 1001}, "k"), ({"user_id": "1", "k": "10"}, "k"),
    ({"user_id": "1", "k": 2.5}, "k"), ({"k": 3}, "user_id"), ({"user_id": ""}, "user_id"),
    ({"user_id": None}, "user_id"), ({"user_id": "1", "exclude_seen": "yes"}, "exclude_seen"),
    ({"user_id": "1", "colour": "red"}, "colour"), ({"user_id": "1", "context": {"hour_sin": [[1]]}}, "context.hour_sin"),
])
def test_request_validation_names_the_field(body, field):
    with pytest.raises(ValidationError) as e:
        RecommendRequest.model_validate(body)
    message, fields = validation_message([{**err, "loc": ("body",) + tuple(err["loc"])} for err in e.value.errors()])
    assert any(f == field or f.startswith(field + ".") for f in fields), (fields, message)
    assert field in message
    assert RecommendRequest.model_validate({"user_id": 7}).user_id == "7"
    assert SimilarItemsRequest.model_validate({"item_id": 50, "k": 1000}).k == 1000


# ---- user state and catalogue ------------------------------------------------------------------------
def test_user_state_history_and_seen_match_the_dataset(users, ml100k_dataset, schema):
    test = read_split_examples(ml100k_dataset, "test", schema, with_seen=True)
    n = schema.history_length
    for u, item, history, seen in list(zip(test["user_idx"], test["item_idx"], test["history"], test["seen_items"]))[:200]:
        hist = users.history(u)
        assert hist.dtype == np.int64 and hist.shape == (n,)
        assert hist[0] == item                                                   # the latest interaction
        assert list(hist[1:]) == list(history[:n - 1])                          # then the ones before it
        assert set(users.seen(u)) == set(seen) | {item}
    assert users.lookup("1") == 1 and users.lookup("no-such-user") == 0
    assert not users.history(0).any() and len(users.seen(0)) == 0
    some = [0, 1, 2, users.num_users - 1, users.num_users]                   # batched; unknown rows all 0
    np.testing.assert_array_equal(users.histories(some)[:4], np.stack([users.history(u) for u in some[:4]]))
    assert not users.histories(some)[4].any()


def test_user_features_for_cold_start(users):
    assert users.encode_user_features({"gender": "F", "occupation": "no-such-job"}) == {"gender": 1, "occupation": 0}
    with pytest.raises(RequestError, match="user_features.shoe_size"):
        users.encode_user_features({"shoe_size": 42})


def test_catalogue_popularity(catalogue):
    scores, items = catalogue.popularity_topk(5, exclude=np.array([catalogue.popular[0]]))
    assert list(items) == list(catalogue.popular[1:6]) and np.all(np.diff(scores) <= 0)
    assert catalogue.lookup("50") > 0 and catalogue.lookup("nope") == 0 and catalogue.title(catalogue.lookup("50"))


# ---- shards, merge, fan-out --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_index(tmp_path_factory):
    """3-shard Flat index over 300 random vectors (with duplicated vectors to create exact ties)."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 8)).astype(np.float32)
    emb[150:170] = emb[130:150]                                  # exact score ties across items
    idx = np.arange(1, 301)
    out = tmp_path_factory.mktemp("serve-units") / "index"
    build_local_index(out, emb, idx, [f"i{i}" for i in idx], num_shards=3)
    return out, rng.normal(size=(20, 8)).astype(np.float32)


def test_per_shard_search_and_merge_equal_sharded_search(random_index):
    out, queries = random_index
    full = ShardedIndex.load(out)
    shards = [ShardedIndex.load(out, shards=[s]) for s in range(3)]
    exclude = [np.arange(1 + q, 60 + q, 3) for q in range(len(queries))]
    want_s, want_i = full.search(queries, 25, exclude=exclude)
    for q in range(len(queries)):
        parts = [sh.search(queries[q:q + 1], 25, exclude=[exclude[q]]) for sh in shards]
        s, i = merge_topk([p[0][0] for p in parts], [p[1][0] for p in parts], 25)
        np.testing.assert_array_equal(i, want_i[q])
        np.testing.assert_allclose(s, want_s[q], rtol=1e-6)
    s, i = merge_topk([np.array([1.0], np.float32)], [np.array([3])], 4)          # padding
    assert list(i) == [3, -1, -1, -1] and np.isneginf(s[1:]).all()


def test_shard_store_versions_and_batched_search(random_index, tmp_path):
    out, queries = random_index
    v2dir = tmp_path / "v2"
    build_local_index(v2dir, np.eye(8, dtype=np.float32), np.arange(1, 9), [f"i{i}" for i in range(1, 9)], num_shards=3)
    store = ShardStore(1)
    v1 = store.load(str(out))
    v2 = store.load(str(v2dir))
    assert store.current == v2 and list(store.versions) == [v1, v2] and store.status()["loaded_versions"] == [v1, v2]
    reqs = [SearchRequest(queries[0], 3), SearchRequest(queries[1], 5, np.array([1, 2]), v1),
            SearchRequest(queries[2], 2, None, "nope")]
    res = store.search_many(reqs)
    assert res[0].version == v2 and len(res[0].items) == 3
    full = ShardedIndex.load(out, shards=[1]).search(queries[1:2], 5, exclude=[np.array([1, 2])])
    assert res[1].version == v1 and list(res[1].items) == list(full[1][0])
    assert res[2].error and "nope" in res[2].error
    assert store.load(str(v2dir)) == v2 and len(store.versions) == 2          # reloading is a no-op


def _fake(results: list):
    """An async searcher answering from a scripted list of (version, held, items|Exception)."""
    calls = []

    async def call(req: SearchRequest) -> SearchResult:
        calls.append(req.version)
        version, held, items = results[min(len(calls) - 1, len(results) - 1)]
        if isinstance(items, Exception):
            raise items
        if req.version is not None and req.version not in held:
            return SearchResult(req.version, held, np.zeros(0, np.float32), np.zeros(0, np.int64), "missing")
        v = req.version or version
        return SearchResult(v, held, np.array([1.0 if v == "b" else 0.5], np.float32), np.array(items))
    return call, calls


def test_fanout_answers_from_one_version_mid_swap():
    s0, c0 = _fake([("b", ("a", "b"), [10])])        # already swapped, still holds a
    s1, c1 = _fake([("a", ("a",), [11])])             # not yet swapped
    version, scores, items = asyncio.run(search_all([s0, s1], np.zeros(2, np.float32), 2))
    assert version == "a" and list(items) == [10, 11] and c0 == [None, "a"]
    s2, _ = _fake([("b", ("a", "b"), [12])])
    assert asyncio.run(search_all([s0, s2], np.zeros(2, np.float32), 1))[0] == "b"
    flaky, calls = _fake([("a", ("a",), RuntimeError("replica restarting")), ("a", ("a",), [13])])
    assert asyncio.run(search_all([flaky], np.zeros(2, np.float32), 1))[2][0] == 13 and len(calls) == 2
    x, _ = _fake([("x", ("x",), [1])])
    y, _ = _fake([("y", ("y",), [2])])
    with pytest.raises(ShardsUnavailable, match="one version"):
        asyncio.run(search_all([x, y], np.zeros(2, np.float32), 1, attempts=3, wait_s=0.0))


# ---- encoding and the offline pipeline ---------------------------------------------------------------
@pytest.mark.parametrize("mode", ["user_tower", "trilinear", "scoring_layer"])
def test_encoder_matches_model_and_mixes_cold_start(mode, ml100k_dataset, users):
    from twotower.model.batch import to_tensors
    model = untrained(ml100k_dataset, mode)
    cache = None if mode == "user_tower" else build_user_cache(model, users, batch_size=300)
    enc = QueryEncoder(model, cache)
    ctx = resolve_context({"timestamp": TS}, model.schema)
    known = [QueryInput(u, users.history(u), ctx) for u in (1, 2, 3)]
    cold = QueryInput(0, np.zeros(model.schema.history_length, np.int64), ctx, {"gender": 1, "age_bucket": 3})
    got = enc.encode(known + [cold])
    batch = to_tensors({"user_idx": np.array([1, 2, 3]), "item_idx": np.zeros(3), "history":
                        np.stack([users.history(u) for u in (1, 2, 3)]),
                        **{k: np.full(3, v) for k, v in ctx.items()}}, model.schema)
    with torch.no_grad():
        np.testing.assert_allclose(got[:3], model.query_embedding(batch).numpy(), atol=1e-5)
    np.testing.assert_allclose(got[3], enc.encode([cold])[0], atol=1e-5)
    assert not np.allclose(got[3], enc.encode([QueryInput(0, cold.history, ctx, {"gender": 2})])[0])


def test_user_cache_round_trip_and_checks(ml100k_dataset, users, tmp_path):
    model = untrained(ml100k_dataset, "trilinear")
    table = build_user_cache(model, users)
    with torch.no_grad():
        ref = model.user_embeddings(torch.tensor([5]), torch.from_numpy(users.history(5)[None])).numpy()
    np.testing.assert_allclose(table[5], ref[0], atol=1e-6)
    save_user_cache(tmp_path / "c", table, "abc", users)
    np.testing.assert_array_equal(load_user_cache(tmp_path / "c", "abc", users), table)
    with pytest.raises(UserCacheError, match="built for model"):
        load_user_cache(tmp_path / "c", "other", users)
    with pytest.raises(UserCacheError, match="missing"):
        load_user_cache(tmp_path / "nothing")


def test_serving_refuses_a_dataset_the_model_was_not_trained_on(ml100k_dataset, tmp_path):
    from twotower.model.checkpoint import IncompatibleDatasetError, read_checkpoint, save_checkpoint
    from twotower.serve.loading import load_encoder, load_serving_state
    info = read_checkpoint(save_checkpoint(untrained(ml100k_dataset, "trilinear"), tmp_path / "ckpt",
                                           dataset_dir=str(ml100k_dataset)))
    other = tmp_path / "other"
    other.mkdir()
    schema = json.loads((ml100k_dataset / "schema.json").read_text())
    (other / "schema.json").write_text(json.dumps({**schema, "num_items": schema["num_items"] + 1}))
    for load in (load_serving_state, load_encoder):
        with pytest.raises(IncompatibleDatasetError, match=rf"trained on num_items {schema['num_items']}.*{other}"):
            load(info, str(other))


def _state(model, users, catalogue, dataset) -> ServingState:
    return ServingState(model.schema, model.mode, "test", users, catalogue, context_vocabs(model.schema, dataset),
                        model.cfg.rerank_depth)


def test_offline_recommend_equals_sharded_search(ml100k_dataset, users, catalogue, tmp_path):
    model = untrained(ml100k_dataset, "trilinear")
    emb = model.all_item_embeddings().numpy()
    ids = list(catalogue.item_ids[1:])
    build_local_index(tmp_path / "ix", emb[1:], np.arange(1, len(emb)), ids, num_shards=2)
    index = ShardedIndex.load(tmp_path / "ix")
    enc = QueryEncoder(model, build_user_cache(model, users))
    rec = Recommender(_state(model, users, catalogue, ml100k_dataset), enc, index, "v1")
    for u in ("1", "7"):
        resp = rec.recommend(u, context={"timestamp": TS}, k=15, exclude_items=["50"])
        uidx = users.lookup(u)
        q = enc.encode([QueryInput(uidx, users.history(uidx), resolve_context({"timestamp": TS}, model.schema))])
        _, want = index.search(q, 15, exclude=[np.union1d(users.seen(uidx), [catalogue.lookup("50")])])
        assert [it.item_id for it in resp.items] == [catalogue.item_ids[i] for i in want[0]]
        assert resp.path == "model" and resp.index_version == "v1" and "50" not in [it.item_id for it in resp.items]
    pop = rec.recommend("stranger", k=3)
    assert pop.path == "cold_start" and pop.cold_start_strategy == "popularity" and pop.index_version is None
    assert [it.item_id for it in pop.items] == [catalogue.item_ids[i] for i in catalogue.popular[:3]]


def test_scoring_layer_reranks_like_rank_scores(ml100k_dataset, users, catalogue, tmp_path):
    from twotower.model.batch import to_tensors
    model = untrained(ml100k_dataset, "scoring_layer")
    emb = model.all_item_embeddings()
    build_local_index(tmp_path / "ix", emb[1:].numpy(), np.arange(1, len(emb)), list(catalogue.item_ids[1:]))
    enc = QueryEncoder(model, build_user_cache(model, users))
    rec = Recommender(_state(model, users, catalogue, ml100k_dataset), enc, ShardedIndex.load(tmp_path / "ix"))
    resp = rec.recommend("3", context={"timestamp": TS}, k=25, exclude_seen=False)
    ctx = resolve_context({"timestamp": TS}, model.schema)
    batch = to_tensors({"user_idx": np.array([3]), "item_idx": np.zeros(1), "history": users.history(3)[None],
                        **{k: np.full(1, v) for k, v in ctx.items()}}, model.schema)
    want = model.rank_scores(batch, emb[1:])[0].topk(25).indices.numpy() + 1
    assert [it.item_id for it in resp.items] == [catalogue.item_ids[i] for i in want]
    s, i = rerank_merge(np.array([3, 2, 1, 0], np.float32), np.array([5, 6, 7, -1]), np.array([0.1, 0.9]), 3)
    assert list(i) == [6, 5, 7] and list(s) == pytest.approx([0.9, 0.1, 1.0])
