"""Index swap while serving: re-deploying the Serve config with a new searcher ``user_config.index_dir``
under concurrent requests loses no request, and every answer comes entirely from the old or the new index."""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import requests
from serve_helpers import Offline, assert_same_ranking

from twotower.serve.config import with_index
from twotower.serve.deploy import deploy_config, wait_ready
from twotower.serve.shards import index_version

pytestmark = [pytest.mark.ray]
TS = 880_000_000
USERS = ["1", "2", "5", "8", "13", "21"]


def body(user: str) -> dict:
    return {"user_id": user, "context": {"timestamp": TS}, "k": 10}


@pytest.mark.timeout(900)
def test_index_swap_under_concurrent_requests_loses_nothing(serve_apps):
    art, base = serve_apps.user_tower, serve_apps.user_tower_url
    v1, v2 = index_version(str(art.index)), index_version(str(art.index_v2))
    expected = {v1: Offline(art, art.index), v2: Offline(art, art.index_v2)}
    want = {(v, u): expected[v].topk(body(u)) for v in (v1, v2) for u in USERS}
    assert any(want[(v1, u)][0] != want[(v2, u)][0] for u in USERS)      # the versions are distinguishable
    answers, stop = [], threading.Event()

    def client(i: int) -> None:
        session, n = requests.Session(), 0
        while not stop.is_set():
            user = USERS[(i + n) % len(USERS)]
            n += 1
            try:
                r = session.post(f"{base}/v1/recommend", json=body(user), timeout=60)
                answers.append((user, r.status_code, r.json() if r.status_code == 200 else r.text))
            except requests.RequestException as e:                      # a lost request
                answers.append((user, None, repr(e)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        deploy_config(with_index(serve_apps.config, str(art.index_v2), "tt-user-tower"), serve_apps.dashboard_url)
        wait_ready(base, timeout_s=300, want_version=v2, poll_s=0.2)
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failures = [a for a in answers if a[1] != 200]
    assert not failures, failures[:5]
    versions = Counter(a[2]["index_version"] for a in answers)
    assert set(versions) == {v1, v2}, versions
    for user, _, got in answers:
        assert_same_ranking(got, *want[(got["index_version"], user)])
    # ... and back: the searchers still hold v1, so this swap needs no loading at all
    deploy_config(serve_apps.config, serve_apps.dashboard_url)
    wait_ready(base, timeout_s=300, want_version=v1, poll_s=0.2)
    r = requests.post(f"{base}/v1/recommend", json=body("1"), timeout=60)
    assert r.status_code == 200 and r.json()["index_version"] == v1
