"""A searcher replica killed (SIGKILL) while serving: Serve's controller replaces it, and every request
in the gap is either answered correctly (the fan-out retried the shard) or fails fast with 503 naming the
shard's deployment, with Retry-After; none hangs, none is a 500, and afterwards all answers are 200 again."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import numpy as np
import pytest
import requests
from serve_helpers import assert_same_ranking

from twotower.serve.config import AppArgs
from twotower.serve.deploy import wait_ready
from twotower.serve.fanout import ShardsUnavailable, search_all
from twotower.serve.shards import SearchRequest, SearchResult

TS = 880_000_000
USERS = ["1", "2", "5", "8", "13", "21"]
APP, VICTIM = "tt-user-tower", "Searcher1"
# a request may wait backend_timeout_s for the fan-out, plus encoding and HTTP on a loaded 2-core machine
BOUND_S = AppArgs.model_fields["backend_timeout_s"].default + 20.0


def body(user: str) -> dict:
    return {"user_id": user, "context": {"timestamp": TS}, "k": 10}


def replica_pids(dashboard: str, app: str, deployment: str) -> set[int]:
    """Pids of the ALIVE replica actors of ``app``'s ``deployment`` (Ray state API of ``dashboard``)."""
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard if "://" in dashboard else f"http://{dashboard}", filters=[("class_name", "=", f"ServeReplica:{app}:{deployment}"), ("state", "=", "ALIVE")],
                         detail=True, raise_on_missing_output=False)
    return {int(a.pid) for a in actors if a.pid}


def ranking(got: dict) -> tuple[list[str], list[float]]:
    return [it["item_id"] for it in got["items"]], [it["score"] for it in got["items"]]


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_killed_searcher_replica_is_replaced_and_requests_never_hang(serve_apps):
    base = serve_apps.user_tower_url
    recorded = {}
    for user in USERS:
        r = requests.post(f"{base}/v1/recommend", json=body(user), timeout=60)
        assert r.status_code == 200, r.text
        recorded[user] = r.json()
    (old_pid,) = replica_pids(serve_apps.dashboard_url, APP, VICTIM)
    answers, stop = [], threading.Event()

    def client(i: int) -> None:
        session, n = requests.Session(), 0
        while not stop.is_set():
            user = USERS[(i + n) % len(USERS)]
            n += 1
            t0 = time.monotonic()
            try:
                r = session.post(f"{base}/v1/recommend", json=body(user), timeout=120)
                got = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
                answers.append((user, r.status_code, got, r.headers.get("Retry-After"), t0, time.monotonic() - t0))
            except requests.RequestException as e:                      # a hung or dropped request
                answers.append((user, None, repr(e), None, t0, time.monotonic() - t0))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        deadline = killed_at + 300
        while not (replica_pids(serve_apps.dashboard_url, APP, VICTIM) - {old_pid}) and time.monotonic() < deadline:
            time.sleep(0.5)
        wait_ready(base, timeout_s=max(1.0, deadline - time.monotonic()), poll_s=0.2)
        recovered_at = time.monotonic()
        n_gap = len(answers)
        time.sleep(3.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    new_pids = replica_pids(serve_apps.dashboard_url, APP, VICTIM)
    print(f"\nreplica {VICTIM} pid {old_pid} -> {sorted(new_pids)}; ready again after {recovered_at - killed_at:.1f} s; "
          f"{len(answers)} answers: " + ", ".join(f"{s}: {sum(a[1] == s for a in answers)}"
                                                  for s in sorted({a[1] for a in answers}, key=str))
          + f"; slowest {max(a[5] for a in answers):.1f} s; "
          + next((f"a 503: {a[2]}" for a in answers if a[1] == 503), "no 503"))
    assert len(new_pids) == 1 and old_pid not in new_pids
    assert n_gap > 0
    for user, status, got, retry_after, _, elapsed in answers:
        assert status in (200, 503), (status, got)
        assert elapsed < BOUND_S, (status, elapsed)
        if status == 200:
            assert got["index_version"] == recorded[user]["index_version"]
            want_ids, want_scores = ranking(recorded[user])
            assert_same_ranking(got, want_ids, np.asarray(want_scores, np.float32))
        else:
            assert got["error"] == "unavailable" and got["unavailable"] == [VICTIM], got
            assert VICTIM in got["message"] and "retry after" in got["message"], got
            assert retry_after is not None and int(retry_after) == got["retry_after_s"] >= 1
    after = [a[1] for a in answers if a[4] >= recovered_at]
    assert after and set(after) == {200}, after
    for user in USERS:                                                   # after the restart: identical answers
        r = requests.post(f"{base}/v1/recommend", json=body(user), timeout=60)
        assert r.status_code == 200, r.text
        assert_same_ranking(r.json(), ranking(recorded[user])[0], np.asarray(ranking(recorded[user])[1], np.float32))


def test_fanout_times_out_a_silent_shard_with_503_naming_it():
    import json

    from twotower.serve.http import create_api
    from twotower.serve.schema import Unavailable

    async def ok(req: SearchRequest) -> SearchResult:
        return SearchResult("a", ("a",), np.array([1.0], np.float32), np.array([1]))

    async def silent(req: SearchRequest) -> SearchResult:      # a replica that never answers (dead, queued)
        await asyncio.sleep(3600)

    t0 = time.monotonic()
    with pytest.raises(ShardsUnavailable) as e:
        asyncio.run(search_all([ok, silent], np.zeros(2, np.float32), 1, timeout_s=0.3, names=["S0", "S1"],
                               retry_after_s=4))
    assert time.monotonic() - t0 < 30                              # bounded by timeout_s, not the shard
    assert e.value.deployments == ["S1"] and e.value.retry_after_s == 4
    assert "S1 (shard 1): no answer within" in str(e.value) and "retry after 4 s" in str(e.value)
    r = asyncio.run(create_api().exception_handlers[Unavailable](None, e.value))   # the app's 503 mapping
    assert r.status_code == 503 and r.headers["Retry-After"] == "4"
    assert json.loads(r.body) == {"error": "unavailable", "message": str(e.value), "fields": [], "unavailable": ["S1"],
                        "retry_after_s": 4}


def test_fanout_reports_every_failed_shard_call():
    """``on_error`` (the ``ray_twotower_shard_errors_total`` counter in Serve) hears of each failed call,
    the retried ones too."""
    calls = {"n": 0}

    async def ok(req: SearchRequest) -> SearchResult:
        return SearchResult("a", ("a",), np.array([1.0], np.float32), np.array([1]))

    async def flaky(req: SearchRequest) -> SearchResult:          # fails twice, then answers
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("replica died")
        return SearchResult("a", ("a",), np.array([0.5], np.float32), np.array([2]))

    errors = []
    version, scores, items = asyncio.run(search_all([ok, flaky], np.zeros(2, np.float32), 2, timeout_s=30,
                                                    wait_s=0.01, names=["S0", "S1"],
                                                    on_error=lambda name, why: errors.append((name, why))))
    assert version == "a" and items.tolist() == [1, 2]
    assert errors == [("S1", "RuntimeError: replica died")] * 2
