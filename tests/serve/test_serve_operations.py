"""Operating ``twotower serve``: metrics, backpressure, autoscaling and graceful shutdown, on the real CLI
(``ops_app``: a ``--write-config`` file edited for a small capacity, deployed by ``twotower serve --config``).

The last test sends SIGTERM to the CLI: keep it last in this module (``ops_app`` is shared by the session).
"""
from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from serve_helpers import assert_same_ranking


def _bodies(url: str, n: int, k: int = 50) -> list[dict]:
    users = requests.get(f"{url}/v1/users", params={"limit": 50}, timeout=60).json()["user_ids"]
    return [{"user_id": users[i % len(users)], "k": k, "context": {"timestamp": 893_286_638 + 3_600 * i}}
            for i in range(n)]


def _post(url: str, body: dict) -> tuple[int, float, requests.Response]:
    t0 = time.monotonic()
    r = requests.post(f"{url}/v1/recommend", json=body, timeout=120)
    return r.status_code, time.monotonic() - t0, r


def _scrape() -> str:
    """The text of this Ray node's metrics endpoint (Prometheus format)."""
    import ray
    node = next(n for n in ray.nodes() if n["Alive"])
    return requests.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", timeout=30).text


def _samples(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric ``name`` whose labels include ``labels``."""
    total = 0.0
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}} ([0-9.e+-]+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_metrics_count_requests_by_endpoint_path_and_status(ops_app):
    url = ops_app.url
    known = _bodies(url, 3)
    for body in known:
        assert _post(url, body)[0] == 200
    for body in ({"user_id": "nobody-1"}, {"user_id": "nobody-2"}):                  # cold start (popularity)
        assert _post(url, body)[0] == 200
    assert _post(url, {"user_id": "1", "k": 0})[0] == 422
    assert requests.post(f"{url}/v1/similar-items", json={"item_id": "no-such"}, timeout=60).status_code == 404
    app = {"application": "tt-ops"}
    want = [("ray_twotower_requests_total", {"endpoint": "/v1/recommend", "path": "model", "status": "200"}, 3),
            ("ray_twotower_requests_total", {"endpoint": "/v1/recommend", "path": "cold_start", "status": "200"}, 2),
            ("ray_twotower_requests_total", {"endpoint": "/v1/recommend", "path": "-", "status": "422"}, 1),
            ("ray_twotower_requests_total", {"endpoint": "/v1/similar-items", "path": "-", "status": "404"}, 1),
            ("ray_twotower_request_latency_ms_count", {"endpoint": "/v1/recommend", "status": "200"}, 5)]
    version = requests.get(f"{url}/v1/model", timeout=60).json()["index"]["version"]
    want.append(("ray_twotower_index_version_info", {"shard": "Searcher0", "index_version": version}, 1))
    deadline, text = time.monotonic() + 120, ""
    while time.monotonic() < deadline:                     # Ray exports metrics every few seconds
        text = _scrape()
        if all(_samples(text, name, **app, **labels) >= n for name, labels, n in want):
            break
        requests.get(f"{url}/healthz", timeout=60)         # the searchers set the version gauge again
        time.sleep(2)
    for name, labels, n in want:
        assert _samples(text, name, **app, **labels) >= n, (name, labels, [l for l in text.splitlines()
                                                                            if "twotower" in l][:40])
    assert _samples(text, "ray_twotower_index_version_info", **app, shard="Searcher0", index_version=version) == 1
    assert "ray_twotower_request_latency_ms_bucket" in text


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_a_burst_above_capacity_gets_fast_503s_and_the_rest_stay_correct(ops_app):
    """Capacity 2 ongoing + 4 queued at the proxy: of 48 simultaneous requests the excess is refused at
    once (503, Retry-After), the admitted ones answer exactly what the API answers afterwards."""
    url, n = ops_app.url, 48
    bodies = _bodies(url, n, k=200)
    start = threading.Barrier(n)

    def one(body):
        start.wait()
        return _post(url, body)
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, bodies))
    codes = [c for c, _, _ in results]
    assert set(codes) <= {200, 503} and codes.count(503) >= 1 and codes.count(200) >= 2, codes
    refused = [(dt, r) for c, dt, r in results if c == 503]
    assert all(r.headers.get("Retry-After") == "2" for _, r in refused)
    assert max(dt for dt, _ in refused) < 5.0           # at once: not after the 10 s backend timeout
    for body, (code, _, r) in zip(bodies, results):
        if code == 200:
            again = requests.post(f"{url}/v1/recommend", json=body, timeout=60).json()["items"]
            assert_same_ranking(r.json(), [it["item_id"] for it in again], np.array([it["score"] for it in again]))


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_autoscaling_adds_an_encoder_replica_under_sustained_load(ops_app):
    from ray import serve

    def running() -> int:
        app = serve.status().applications["tt-ops"]
        return app.deployments["QueryEncoder"].replica_states.get("RUNNING", 0)
    url, stop = ops_app.url, threading.Event()
    deadline = time.monotonic() + 120
    while running() != 1 and time.monotonic() < deadline:      # idle since the earlier tests: back to 1
        time.sleep(1)
    assert running() == 1
    bodies = _bodies(url, 50)

    def load(i: int) -> int:
        done = 0
        while not stop.is_set():
            done += _post(url, bodies[(i + done) % len(bodies)])[0] == 200
        return done
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(load, i) for i in range(2)]
        deadline, scaled = time.monotonic() + 180, 1
        while scaled < 2 and time.monotonic() < deadline:
            time.sleep(1)
            scaled = running()                    # read under load (idle, it scales back after 2 s)
        stop.set()
        answered = sum(f.result() for f in futures)
    assert scaled == 2 and answered > 0


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_sigterm_lets_requests_in_flight_finish(ops_app):
    """SIGTERM to ``twotower serve``: every request sent before it is answered 200; the CLI exits 0 and
    the application is gone."""
    url, stop, log = ops_app.url, threading.Event(), []
    bodies = _bodies(url, 50, k=200)

    def load(i: int) -> None:
        j = 0
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                code = requests.post(f"{url}/v1/recommend", json=bodies[(i + j) % 50], timeout=120).status_code
            except requests.RequestException as e:
                code = type(e).__name__
            log.append((t0, time.monotonic(), code))
            j += 1
    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]   # = the Ingress's max ongoing
    for t in threads:
        t.start()
    while len(log) < 6:
        time.sleep(0.05)
    sigterm = time.monotonic()
    code = ops_app.stop()
    stop.set()
    for t in threads:
        t.join(120)
    before = [c for t0, _, c in log if t0 < sigterm]
    in_flight = [c for t0, t1, c in log if t0 < sigterm < t1]
    assert code == 0, "".join(ops_app.lines[-30:])
    assert before and all(c == 200 for c in before), before
    assert in_flight, "no request was in flight at SIGTERM"
    assert requests.post(f"{url}/v1/recommend", json=bodies[0], timeout=60).status_code == 404
