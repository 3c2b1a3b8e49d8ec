"""Colocated serving (``AppArgs.colocate``): the Ingress encodes and searches the whole 2-shard index itself.
Deployed from the written Serve config like ``twotower serve --colocate``: it answers like the offline
pipeline (model and cold-start paths, similar items), reports both shards in ``/v1/model``, and an index
swap through the Ingress's ``user_config`` serves the new version."""
from __future__ import annotations

import numpy as np
import pytest
import requests
from ray.serve.schema import ServeDeploySchema
from serve_helpers import Offline, assert_same_ranking

from twotower.serve.config import AppArgs, serve_config, with_index
from twotower.serve.deploy import deploy_config, wait_ready
from twotower.serve.shards import index_version

pytestmark = [pytest.mark.ray]
BODIES = [{"user_id": u, "context": {"timestamp": 880_000_000 + 7_200 * i}, "k": 10}
          for i, u in enumerate(["1", "2", "5", "8"])]
BODIES.append({"user_id": "ghost", "context": {"timestamp": 880_000_000}, "user_features": {"gender": "F"}})


@pytest.fixture(scope="module")
def colocated(serve_http, user_tower_artifacts):
    import ray
    from ray import serve

    base, options = serve_http
    art = user_tower_artifacts
    config = serve_config(AppArgs(checkpoint=str(art.checkpoint), dataset=str(art.dataset), num_cpus=0.05,
                                  colocate=True), index=str(art.index), host=options["host"], port=options["port"],
                          app_name="tt-colocated", route_prefix="/colocated")
    ServeDeploySchema.model_validate(config)
    assert [d["name"] for d in config["applications"][0]["deployments"]] == ["Ingress"]
    ingress = config["applications"][0]["deployments"][0]      # it does all the work: it is what autoscales
    assert ingress["num_replicas"] == "auto" and ingress["autoscaling_config"]["min_replicas"] == 1
    assert ingress["autoscaling_config"]["max_replicas"] == 4 and ingress["max_queued_requests"] == 256
    dashboard = ray.init(ignore_reinit_error=True).dashboard_url
    deploy_config(config, dashboard)
    wait_ready(f"{base}/colocated", timeout_s=300)
    yield f"{base}/colocated", config, dashboard, art
    serve.delete("tt-colocated")


@pytest.mark.timeout(600)
def test_colocated_answers_like_the_offline_pipeline_and_swaps_the_index(colocated):
    url, config, dashboard, art = colocated
    offline, v1 = Offline(art, art.index), index_version(str(art.index))
    for body in BODIES:
        r = requests.post(f"{url}/v1/recommend", json=body, timeout=60)
        assert r.status_code == 200, r.text
        want = offline.rec.recommend(**body)
        assert r.json()["path"] == want.path and r.json()["index_version"] == v1
        assert_same_ranking(r.json(), [it.item_id for it in want.items], np.array([it.score for it in want.items]))
    r = requests.post(f"{url}/v1/similar-items", json={"item_id": "50", "k": 5}, timeout=60).json()
    assert [it["item_id"] for it in r["items"]] == [it.item_id for it in offline.rec.similar_items("50", k=5).items]
    model = requests.get(f"{url}/v1/model", timeout=60).json()
    assert model["index"]["version"] == v1 and model["index"]["num_shards"] == 2
    assert all(sh["loaded"] and sh["version"] == v1 for sh in model["index"]["shards"])

    v2 = index_version(str(art.index_v2))
    deploy_config(with_index(config, str(art.index_v2), "tt-colocated"), dashboard)
    wait_ready(url, timeout_s=300, want_version=v2, poll_s=0.2)
    want = Offline(art, art.index_v2).topk(BODIES[0])
    r = requests.post(f"{url}/v1/recommend", json=BODIES[0], timeout=60).json()
    assert r["index_version"] == v2
    assert_same_ranking(r, *want)
