"""Every feature kind over real HTTP (Ray Serve on 127.0.0.1): the planted every-kind dataset of
``feature_data`` served in user_tower (2 shards) and scoring_layer (1 shard) mode; cold start with each
user feature kind equals the offline ``Recommender``; bad values of each kind are a 422 naming the field."""
from __future__ import annotations

import numpy as np
import pytest
import requests
import torch
from serve_helpers import assert_same_ranking, make_feature_artifacts

pytestmark = [pytest.mark.ray]
TS = 880_000_000
STORED = {"c_device": "android", "c_temp": 9.5, "c_dist": 1.0, "c_tags": ["morning", "night"]}
COLD = {"u_cat": "a", "u_num": 70, "u_bucket": 30, "u_tags": ["t2", "t4"], "u_bio": "Sigma kappa, zeta!",
        "u_vec": [0.5, -1, 0.25, 2]}
MODES = {"user_tower": 2, "scoring_layer": 1}


@pytest.fixture(scope="module")
def feature_apps(serve_http, tmp_path_factory):
    """{mode: (base url, Artifacts, offline Recommender)} of the two apps, ready (healthz 200)."""
    from ray import serve

    from twotower.serve import Recommender
    from twotower.serve.app import build_app
    from twotower.serve.deploy import wait_ready

    base, _ = serve_http
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    arts = {m: make_feature_artifacts(tmp_path_factory.mktemp(f"http-features-{m}"), m, shards)
            for m, shards in MODES.items()}
    torch.set_num_threads(threads)
    for mode, art in arts.items():
        serve.run(build_app({"checkpoint": str(art.checkpoint), "index": str(art.index), "num_cpus": 0.05}),
                  name=f"tt-features-{mode}", route_prefix=f"/features-{mode}", blocking=False)
    apps = {}
    for mode, art in arts.items():
        wait_ready(f"{base}/features-{mode}", timeout_s=300)
        apps[mode] = (f"{base}/features-{mode}", art, Recommender.load(art.checkpoint, art.index))
    yield apps
    for mode in MODES:
        serve.delete(f"tt-features-{mode}")


def post(url: str, body) -> requests.Response:
    return requests.post(f"{url}/v1/recommend", json=body, timeout=60)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", list(MODES))
def test_cold_start_with_each_user_feature_kind_equals_the_offline_answer(feature_apps, mode):
    url, _, rec = feature_apps[mode]
    context = {"timestamp": TS, **STORED}
    cases = [{name: value} for name, value in COLD.items()] + [COLD]
    for i, features in enumerate(cases):
        body = {"user_id": f"new-{i}", "context": context, "k": 12, "user_features": features}
        r = post(url, body)
        assert r.status_code == 200, r.text
        want = rec.recommend(**body)
        got = r.json()
        assert got["path"] == want.path == "cold_start" and got["cold_start_strategy"] == "user_features", features
        assert got["context"] == want.context and got["context"]["c_tags"] == [1, 3]
        assert_same_ranking(got, [it.item_id for it in want.items], np.array([it.score for it in want.items]))
    known = {"user_id": "u3", "context": {**context, "c_tags": []}, "k": 12}
    r = post(url, known)
    assert r.status_code == 200 and r.json()["path"] == "model", r.text
    want = rec.recommend(**known)
    assert_same_ranking(r.json(), [it.item_id for it in want.items], np.array([it.score for it in want.items]))


CONTEXT = {"timestamp": TS, **STORED}
BAD = [
    ({"user_features": {"u_vec": [1, 2, 3]}}, "user_features.u_vec", "exactly 4 numbers"),
    ({"user_features": {"u_vec": [1, 2, 3, "4"]}}, "user_features.u_vec", ""),
    ({"user_features": {"u_num": "tall"}}, "user_features.u_num", "finite number"),
    ({"user_features": {"u_bucket": 5e6}}, "user_features.u_bucket", "1e+06"),
    ({"user_features": {"u_tags": "t1"}}, "user_features.u_tags", "list"),
    ({"user_features": {"u_tags": ["t1", "t2", "t3", "t4"]}}, "user_features.u_tags", "at most 3"),
    ({"user_features": {"u_bio": ["sigma"]}}, "user_features.u_bio", "text"),
    ({"user_features": {"u_cat": {"a": 1}}}, "user_features.u_cat", ""),
    ({"context": {**CONTEXT, "c_tags": ["noon"]}}, "context.c_tags", "unknown value 'noon'"),
    ({"context": {**CONTEXT, "c_tags": 1}}, "context.c_tags", "list"),
    ({"context": {**CONTEXT, "c_dist": "near"}}, "context.c_dist", "finite number"),
    ({"context": {**CONTEXT, "c_device": 3}}, "context.c_device", "1..2"),
    ({"context": {"timestamp": TS}}, "context.c_device", "stored"),
    ({"context": STORED}, "context.hour_sin", "timestamp"),
    ({"context": None}, "context", ""),
    (None, "context", "field required"),                      # no context: a model with stored ones needs it
]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("change, field, message", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_values_of_each_kind_are_a_422_naming_the_field(feature_apps, change, field, message):
    url, _, rec = feature_apps["user_tower"]
    body = {"user_id": "new"} if change is None else {"user_id": "new", "context": CONTEXT, **change}
    r = post(url, body)
    assert r.status_code == 422, r.text
    got = r.json()
    assert got["error"] == "invalid_request" and field in got["fields"] and message in got["message"], got


@pytest.mark.timeout(600)
def test_model_info_and_openapi_declare_every_kind(feature_apps):
    url, art, _ = feature_apps["scoring_layer"]
    info = requests.get(f"{url}/v1/model", timeout=60).json()
    kinds = {f["name"]: f["kind"] for f in info["context_schema"]}
    assert kinds == {"c_device": "categorical", "c_temp": "numeric", "c_dist": "bucketized", "c_tags": "multi_hot",
                     "hour_sin": "numeric", "hour_cos": "numeric", "day_of_week": "categorical",
                     "is_weekend": "numeric"}
    assert {f["name"]: f["kind"] for f in info["user_feature_schema"]} == {
        "u_cat": "categorical", "u_num": "numeric", "u_bucket": "bucketized", "u_tags": "multi_hot",
        "u_bio": "hashed_bag", "u_vec": "vector"}
    ctx = {f["name"]: f for f in info["context_schema"]}
    assert ctx["c_device"]["values"] == ["ios", "android"] and ctx["c_tags"]["values"] == ["morning", "evening", "night"]
    doc = requests.get(f"{url}/openapi.json", timeout=60).json()["components"]["schemas"]
    vec = doc["UserFeatures"]["properties"]["u_vec"]
    assert vec["minItems"] == vec["maxItems"] == 4 and vec["items"]["maximum"] == 1e6
    assert doc["RecommendContext"]["required"] == ["c_device", "c_temp", "c_dist", "c_tags"]
