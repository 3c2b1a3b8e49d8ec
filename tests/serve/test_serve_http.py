"""Real Ray Serve on 127.0.0.1, real HTTP: offline equivalence, context effect, cold start, errors."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from twotower.serve.shards import index_version

from serve_helpers import Offline, assert_same_ranking

pytestmark = [pytest.mark.ray]
TS = 880_000_000
USERS = [str(u) for u in range(1, 21)]


@pytest.fixture(scope="module")
def offline_ut(serve_apps):
    return Offline(serve_apps.user_tower)


@pytest.fixture(scope="module")
def offline_tri(serve_apps):
    return Offline(serve_apps.trilinear)


def post(base: str, path: str, body) -> requests.Response:
    return requests.post(f"{base}{path}", json=body, timeout=60)


@pytest.mark.timeout(900)
def test_recommend_over_http_equals_offline_sharded_search(serve_apps, offline_ut):
    base = serve_apps.user_tower_url
    bodies = [{"user_id": u, "context": {"timestamp": TS + 3600 * i}, "k": 10} for i, u in enumerate(USERS)]
    bodies += [{"user_id": 3, "context": {"timestamp": TS}, "k": 20, "exclude_seen": False, "exclude_items": ["50", 181]},
               {"user_id": "13", "context": {"timestamp": TS}, "k": 1000}]        # user 13 has seen > 682 items
    with ThreadPoolExecutor(8) as pool:                  # concurrent: the encoder and searchers batch them
        answers = list(pool.map(lambda b: post(base, "/v1/recommend", b), bodies))
    version = index_version(str(serve_apps.user_tower.index))
    for body, r in zip(bodies, answers):
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["path"] == "model" and got["cold_start_strategy"] is None
        assert got["model_version"] == offline_ut.model_version and got["index_version"] == version
        assert_same_ranking(got, *offline_ut.topk(body))
    assert not {"50", "181"} & {it["item_id"] for it in answers[-2].json()["items"]}
    seen = offline_ut.state.users.seen(offline_ut.state.users.lookup("13"))
    assert len(answers[-1].json()["items"]) == min(1000, offline_ut.state.catalogue.num_items - 1 - len(seen))


@pytest.mark.timeout(600)
def test_trilinear_two_contexts_give_different_lists(serve_apps, offline_tri):
    base = serve_apps.trilinear_url
    night = {"timestamp": TS + 3 * 3600}                                              # a Thursday, 03:00 UTC
    weekend = {"hour_sin": 0.0, "hour_cos": -1.0, "day_of_week": "Saturday", "is_weekend": 1}
    differ = 0
    for u in USERS[:8]:
        lists = []
        for ctx in (night, weekend):
            body = {"user_id": u, "context": ctx, "k": 10}
            r = post(base, "/v1/recommend", body)
            assert r.status_code == 200, r.text
            assert_same_ranking(r.json(), *offline_tri.topk(body))
            lists.append([it["item_id"] for it in r.json()["items"]])
        differ += lists[0] != lists[1]
    assert differ >= 4, f"only {differ}/8 users got different top-10 lists in two contexts"


@pytest.mark.timeout(600)
def test_cold_start_paths(serve_apps, offline_ut):
    base = serve_apps.user_tower_url
    body = {"user_id": "new-user-1", "context": {"timestamp": TS}, "k": 10,
            "user_features": {"gender": "F", "age_bucket": "25", "occupation": "artist"}}
    r = post(base, "/v1/recommend", body)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "cold_start" and r.json()["cold_start_strategy"] == "user_features"
    assert_same_ranking(r.json(), *offline_ut.topk(body))
    cat = offline_ut.state.catalogue
    for nothing_known in ({"user_id": "new-user-2", "k": 5, "exclude_items": [str(cat.item_ids[cat.popular[0]])]},
                          {"user_id": "new-user-3", "k": 5, "user_features": {"occupation": "astronaut"}}):
        r = post(base, "/v1/recommend", nothing_known)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["path"] == "cold_start" and got["cold_start_strategy"] == "popularity"
        skip = 1 if nothing_known.get("exclude_items") else 0
        assert [it["item_id"] for it in got["items"]] == [str(cat.item_ids[i]) for i in cat.popular[skip:skip + 5]]
        assert got["items"][0]["title"]


VALID_CONTEXT = {"timestamp": TS}
BAD = [
    ({"user_id": "1", "context": {"hour_of_day": 3}}, 422, "context.hour_of_day"),
    ({"user_id": "1", "context": {**VALID_CONTEXT, "hour_sin": "noon"}}, 422, "context.hour_sin"),
    ({"user_id": "1", "context": {**VALID_CONTEXT, "day_of_week": 9}}, 422, "context.day_of_week"),
    ({"user_id": "1", "context": {"hour_sin": 0.5}}, 422, "context.hour_cos"),
    ({"user_id": "1", "context": {"timestamp": "yesterday"}}, 422, "context.timestamp"),
    ({"user_id": "1", "context": {"hour_sin": [0.5]}}, 422, "context.hour_sin"),
    ({"user_id": "1", "context": "morning"}, 422, "context"),
    ({"user_id": "1", "k": 0}, 422, "k"),
    ({"user_id": "1", "k": 1001}, 422, "k"),
    ({"user_id": "1", "k": "10"}, 422, "k"),
    ({"user_id": "1", "exclude_seen": "no"}, 422, "exclude_seen"),
    ({"user_id": "1", "exclude_items": "50"}, 422, "exclude_items"),
    ({"k": 10}, 422, "user_id"),
    ({"user_id": "1", "colour": "red"}, 422, "colour"),
    ({"user_id": "ghost", "user_features": {"shoe_size": 44}}, 422, "user_features.shoe_size"),
    ("{not json", 422, "body"),
    ([1, 2, 3], 422, "body"),
]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("body, status, field", BAD, ids=[b[2] for b in BAD])
def test_bad_input_is_4xx_naming_the_field(serve_apps, body, status, field):
    url = f"{serve_apps.user_tower_url}/v1/recommend"
    if isinstance(body, str):
        r = requests.post(url, data=body, headers={"content-type": "application/json"}, timeout=60)
    else:
        r = requests.post(url, json=body, timeout=60)
    assert r.status_code == status, r.text
    got = r.json()
    assert got["error"] == "invalid_request" and field in got["fields"] and field in got["message"], got


@pytest.mark.timeout(600)
def test_similar_items_and_replicas_survive_bad_input(serve_apps, offline_ut):
    base = serve_apps.user_tower_url
    r = post(base, "/v1/similar-items", {"item_id": "50", "k": 7})
    assert r.status_code == 200, r.text
    idx = offline_ut.state.catalogue.lookup("50")
    scores, items = offline_ut.index.search(offline_ut.encoder.item_vectors(np.array([idx])), 7, exclude=[[idx]])
    assert_same_ranking(r.json(), [str(i) for i in offline_ut.index.item_ids(items[0])], scores[0])
    r = post(base, "/v1/similar-items", {"item_id": "no-such-item", "k": 7})
    assert r.status_code == 404 and r.json()["fields"] == ["item_id"] and "no-such-item" in r.json()["message"]
    assert post(base, "/v1/similar-items", {"item_id": "50", "k": 0}).status_code == 422
    assert requests.get(f"{base}/healthz", timeout=60).status_code == 200          # after all the bad input
    assert post(base, "/v1/recommend", {"user_id": "1"}).status_code == 200        # context from the clock


@pytest.mark.timeout(600)
def test_model_info_health_and_openapi(serve_apps, offline_ut):
    base = serve_apps.user_tower_url
    info = requests.get(f"{base}/v1/model", timeout=60).json()
    assert info["model_version"] == offline_ut.model_version and info["context_mode"] == "user_tower"
    assert [f["name"] for f in info["context_schema"]] == ["hour_sin", "hour_cos", "day_of_week", "is_weekend"]
    assert info["context_schema"][2]["values"][5] == "Saturday" and info["accepts_timestamp"]
    ix = info["index"]
    assert ix["version"] == index_version(str(serve_apps.user_tower.index)) and ix["num_shards"] == 2
    assert ix["num_items"] == 1682 and ix["factory"] == "Flat" and sum(s["count"] for s in ix["shards"]) == 1682
    health = requests.get(f"{base}/healthz", timeout=60)
    assert health.status_code == 200 and health.json()["status"] == "ready"
    assert [s["loaded"] for s in health.json()["shards"]] == [True, True]
    assert requests.get(f"{base}/docs", timeout=60).status_code == 200
    paths = requests.get(f"{base}/openapi.json", timeout=60).json()["paths"]
    assert {"/v1/recommend", "/v1/similar-items", "/v1/model", "/healthz"} <= set(paths)
    tri = requests.get(f"{serve_apps.trilinear_url}/v1/model", timeout=60).json()
    assert tri["context_mode"] == "trilinear" and tri["index"]["num_shards"] == 1


@pytest.mark.timeout(600)
def test_scoring_layer_reranks_over_http_like_offline(serve_apps):
    rec = Offline(serve_apps.scoring_layer).rec
    assert rec.index_version == index_version(str(serve_apps.scoring_layer.index))
    for u in USERS[:4]:
        body = {"user_id": u, "context": {"timestamp": TS}, "k": 40}                 # deeper than rerank_depth=30
        r = post(serve_apps.scoring_layer_url, "/v1/recommend", body)
        assert r.status_code == 200, r.text
        want = rec.recommend(**body)
        assert_same_ranking(r.json(), [it.item_id for it in want.items], np.array([it.score for it in want.items]))
        assert r.json()["index_version"] == want.index_version
