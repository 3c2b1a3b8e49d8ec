"""twotower.serve.Recommender: the HTTP API's answers in this process, without Ray.

Against the real Serve apps of conftest.py (user_tower over a 2-shard index, trilinear and scoring_layer
over 1 shard): the same requests give the same responses (items, scores within 1e-5, path, cold-start
strategy, model and index versions, resolved context) and bad input the same field and status. Without
Ray: the exact in-memory index (``index=None``) answers like the Flat index directories, the sync API
works inside a running event loop, and a fresh interpreter using it never imports ``ray``.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest
import requests

from twotower.serve import Recommender
from twotower.serve.offline import EXACT_INDEX_VERSION, run_local
from twotower.serve.schema import RequestError
from twotower.serve.shards import index_version

from serve_helpers import assert_same_ranking

TS = 880_000_000
TOL = 1e-5
WEEKEND = {"hour_sin": 0.0, "hour_cos": -1.0, "day_of_week": "Saturday", "is_weekend": 1}
RECOMMEND = [
    {"user_id": "1", "context": {"timestamp": TS}, "k": 10},
    {"user_id": 7, "context": WEEKEND, "k": 15},
    {"user_id": "3", "context": {"timestamp": TS + 7200}, "k": 20, "exclude_seen": False, "exclude_items": ["50", 181]},
    {"user_id": "13", "context": {"timestamp": TS}, "k": 1000},                   # 636 seen items excluded
    {"user_id": "new-user-1", "context": {"timestamp": TS}, "k": 10,
     "user_features": {"gender": "F", "age_bucket": "25", "occupation": "artist"}},  # cold start: user features
    {"user_id": "new-user-2", "context": {"timestamp": TS}, "k": 5, "exclude_items": ["50"]},  # popularity
]
SIMILAR = [{"item_id": "50", "k": 7}, {"item_id": 181, "k": 30}]
BAD = [  # (endpoint, arguments = JSON body, the field both name)
    ("recommend", {"user_id": "1", "context": {"hour_of_day": 3}}, "context.hour_of_day"),
    ("recommend", {"user_id": "1", "context": {"timestamp": TS, "day_of_week": 9}}, "context.day_of_week"),
    ("recommend", {"user_id": "1", "context": {"timestamp": TS, "hour_sin": "noon"}}, "context.hour_sin"),
    ("recommend", {"user_id": "1", "context": {"hour_sin": 0.5}}, "context.hour_cos"),
    ("recommend", {"user_id": "1", "context": {"timestamp": "yesterday"}}, "context.timestamp"),
    ("recommend", {"user_id": "1", "context": "morning"}, "context"),
    ("recommend", {"user_id": "1", "k": 0}, "k"),
    ("recommend", {"user_id": "1", "k": "10"}, "k"),
    ("recommend", {"user_id": "1", "exclude_items": "50"}, "exclude_items"),
    ("recommend", {"user_id": "ghost", "user_features": {"shoe_size": 44}}, "user_features.shoe_size"),
    ("similar_items", {"item_id": "no-such-item"}, "item_id"),                     # 404
    ("similar_items", {"item_id": "50", "k": 0}, "k"),
]
ROUTES = {"recommend": "/v1/recommend", "similar_items": "/v1/similar-items"}


def assert_same_answer(got: dict, want, tol: float = TOL) -> None:
    """An HTTP JSON answer equals a response model: every field but ``items`` exactly; items in the same
    order (swaps only between items whose scores tie within ``tol``), scores within ``tol``, same titles."""
    w = want.model_dump(mode="json")
    assert {k: v for k, v in got.items() if k != "items"} == {k: v for k, v in w.items() if k != "items"}
    assert_same_ranking(got, [it["item_id"] for it in w["items"]], np.array([it["score"] for it in w["items"]]), tol)
    titles = {it["item_id"]: it["title"] for it in w["items"]}
    assert all(it["title"] == titles[it["item_id"]] for it in got["items"])


@pytest.fixture(scope="module")
def artifacts(user_tower_artifacts, trilinear_artifacts, scoring_layer_artifacts):
    return {"user_tower": user_tower_artifacts, "trilinear": trilinear_artifacts,
            "scoring_layer": scoring_layer_artifacts}


@pytest.fixture(scope="module")
def recommenders(artifacts):
    """mode -> (Recommender over the app's index directory, Recommender over the exact in-memory index);
    the dataset given for user_tower, the checkpoint's dataset_dir for the others (as their apps do)."""
    out = {}
    for mode, art in artifacts.items():
        dataset = art.dataset if mode == "user_tower" else None
        out[mode] = (Recommender.load(art.checkpoint, art.index, dataset), Recommender.load(art.checkpoint))
    return out


# ---- without Ray ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["user_tower", "trilinear", "scoring_layer"])
def test_exact_index_answers_like_the_flat_index_directory(recommenders, artifacts, mode):
    on_disk, exact = recommenders[mode]
    assert on_disk.index_version == index_version(str(artifacts[mode].index)) and on_disk.mode.value == mode
    assert exact.index_version == EXACT_INDEX_VERSION and exact.index.num_items == on_disk.index.num_items
    for body in RECOMMEND:
        want, got = on_disk.recommend(**body), exact.recommend(**body)
        if got.path == "model" or got.cold_start_strategy == "user_features":
            assert got.index_version == EXACT_INDEX_VERSION
            got = got.model_copy(update={"index_version": want.index_version})
        assert_same_answer(got.model_dump(mode="json"), want)
    for body in SIMILAR:
        want, got = on_disk.similar_items(**body), exact.similar_items(**body)
        assert_same_answer(got.model_copy(update={"index_version": want.index_version}).model_dump(mode="json"), want)
    deep = exact.recommend("13", context={"timestamp": TS}, k=1000)
    seen = exact.state.users.seen(exact.state.users.lookup("13"))
    assert len(deep.items) == min(1000, exact.state.catalogue.num_items - 1 - len(seen)) and deep.items[-1].item_id


def test_arguments_become_the_http_request(recommenders):
    rec = recommenders["user_tower"][1]
    want = rec.recommend("3", context={"timestamp": TS}, k=5, exclude_items=["50", 181])
    got = rec.recommend(np.int64(3), context={"timestamp": np.int64(TS)}, k=np.int64(5), exclude_items=np.array([50, 181]))
    assert got == want == rec.recommend("3", context={"timestamp": TS}, k=5, exclude_items=(np.int64(50), "181"))
    assert want.user_id == "3" and not {"50", "181"} & {it.item_id for it in want.items}
    pop = rec.recommend("nobody", context={"timestamp": TS}, k=3)
    assert (pop.path, pop.cold_start_strategy, pop.index_version) == ("cold_start", "popularity", None)
    with pytest.raises(RequestError) as e:
        rec.recommend("1", k=1001)
    assert (e.value.field, e.value.status) == ("k", 422) and str(e.value).startswith("k: ")
    with pytest.raises(RequestError) as e:
        rec.similar_items("no-such-item")
    assert (e.value.field, e.value.status) == ("item_id", 404)
    assert "user_tower" in repr(rec) and EXACT_INDEX_VERSION in repr(rec)


def test_sync_api_inside_a_running_event_loop(recommenders):
    rec = recommenders["trilinear"][0]
    want = rec.recommend("1", context={"timestamp": TS}, k=10), rec.similar_items("50", k=5)

    async def notebook_cell():                          # Jupyter runs cells inside a running event loop
        asyncio.get_running_loop()
        return rec.recommend("1", context={"timestamp": TS}, k=10), rec.similar_items("50", k=5)
    assert asyncio.run(notebook_cell()) == want

    async def suspends():
        await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="not local"):
        run_local(suspends())


NO_RAY_SCRIPT = """
import asyncio, json, sys
from twotower.serve import Recommender
ckpt, index = sys.argv[1], sys.argv[2]
rec, exact = Recommender.load(ckpt, index), Recommender.load(ckpt)
answers = [r.recommend("1", context={"timestamp": 880000000}, k=5).model_dump(mode="json") for r in (rec, exact)]
answers.append(rec.similar_items("50", k=5).model_dump(mode="json"))
async def cell():
    return rec.recommend("new-user", context={"timestamp": 880000000}, k=3).path
answers.append(asyncio.run(cell()))
print(json.dumps({"ray": sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")), "answers": answers}))
"""


def test_a_fresh_interpreter_never_imports_ray(artifacts):
    art = artifacts["trilinear"]
    out = subprocess.run([sys.executable, "-c", NO_RAY_SCRIPT, str(art.checkpoint), str(art.index)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["ray"] == []
    ours, exact, similar, cold = got["answers"]
    assert [it["item_id"] for it in ours["items"]] == [it["item_id"] for it in exact["items"]]
    assert len(similar["items"]) == 5 and cold == "cold_start"


# ---- against the Serve apps over HTTP --------------------------------------------------------------------
def _url(serve_apps, mode: str) -> str:
    return {"user_tower": serve_apps.user_tower_url, "trilinear": serve_apps.trilinear_url,
            "scoring_layer": serve_apps.scoring_layer_url}[mode]


def _post(base: str, endpoint: str, body: dict) -> requests.Response:
    return requests.post(f"{base}{ROUTES[endpoint]}", json=body, timeout=60)


@pytest.mark.ray
@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", ["user_tower", "trilinear"])
def test_offline_answers_equal_the_http_answers(serve_apps, recommenders, mode):
    rec = recommenders[mode][0]
    base = _url(serve_apps, mode)
    paths = set()
    for body in RECOMMEND:                              # one at a time: the served encoder batch is 1 query too
        r = _post(base, "recommend", body)
        assert r.status_code == 200, r.text
        assert_same_answer(r.json(), rec.recommend(**body))
        paths.add((r.json()["path"], r.json()["cold_start_strategy"]))
    assert paths == {("model", None), ("cold_start", "user_features"), ("cold_start", "popularity")}
    for body in SIMILAR:
        r = _post(base, "similar_items", body)
        assert r.status_code == 200, r.text
        assert_same_answer(r.json(), rec.similar_items(**body))


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_scoring_layer_rerank_offline_equals_http(serve_apps, recommenders):
    rec, exact = recommenders["scoring_layer"]
    for u in ("1", "2", "5"):
        body = {"user_id": u, "context": {"timestamp": TS}, "k": 40}              # deeper than rerank_depth=30
        r = _post(serve_apps.scoring_layer_url, "recommend", body)
        assert r.status_code == 200, r.text
        assert_same_answer(r.json(), rec.recommend(**body))
        want = exact.recommend(**body).model_copy(update={"index_version": r.json()["index_version"]})
        assert_same_answer(r.json(), want)


@pytest.mark.ray
@pytest.mark.timeout(600)
@pytest.mark.parametrize("endpoint, body, field", BAD, ids=[f"{b[0]}-{b[2]}" for b in BAD])
def test_bad_input_raises_the_http_error(serve_apps, recommenders, endpoint, body, field):
    r = _post(serve_apps.user_tower_url, endpoint, body)
    with pytest.raises(RequestError) as e:
        getattr(recommenders["user_tower"][0], endpoint)(**body)
    assert r.status_code == e.value.status and r.status_code in (404, 422), r.text
    assert r.json()["fields"] == [e.value.field] == [field] and r.json()["message"] == str(e.value)
