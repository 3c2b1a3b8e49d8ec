"""Fixtures of the serving tests: trained checkpoints + indexes, Serve on 127.0.0.1, the two apps."""
from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import Apps, free_port, make_artifacts, start_cli


@pytest.fixture(scope="session")
def user_tower_artifacts(ml100k_dataset, tmp_path_factory):
    return make_artifacts(Path(ml100k_dataset), tmp_path_factory.mktemp("serve-user-tower"), "user_tower", 2, True)


@pytest.fixture(scope="session")
def trilinear_artifacts(ml100k_dataset, tmp_path_factory):
    return make_artifacts(Path(ml100k_dataset), tmp_path_factory.mktemp("serve-trilinear"), "trilinear", 1, False)


@pytest.fixture(scope="session")
def scoring_layer_artifacts(ml100k_dataset, tmp_path_factory):
    """Untrained (random) scoring_layer model: the re-ranking path only needs some head."""
    return make_artifacts(Path(ml100k_dataset), tmp_path_factory.mktemp("serve-scoring"), "scoring_layer", 1, False,
                          steps=0)


@pytest.fixture(scope="session")
def serve_http(ray_cluster):
    """Serve started on the session's Ray with its HTTP proxy on 127.0.0.1:<free port>; yields
    ``(base_url, http_options)`` and shuts Serve down at the end of the session."""
    from ray import serve

    options = {"host": "127.0.0.1", "port": free_port()}
    serve.start(http_options=options)
    yield f"http://127.0.0.1:{options['port']}", options
    serve.shutdown()


@pytest.fixture(scope="session")
def serve_apps(serve_http, user_tower_artifacts, trilinear_artifacts, scoring_layer_artifacts):
    """The three applications of :class:`Apps`, ready (healthz 200) on the session's Serve."""
    import ray
    from ray import serve

    from twotower.serve.app import build_app
    from twotower.serve.config import AppArgs, serve_config
    from twotower.serve.deploy import deploy_config, wait_ready

    base, options = serve_http
    dashboard = ray.init(ignore_reinit_error=True).dashboard_url
    ut = user_tower_artifacts
    config = serve_config(AppArgs(checkpoint=str(ut.checkpoint), dataset=str(ut.dataset), num_cpus=0.05),
                          index=str(ut.index), host=options["host"], port=options["port"],
                          app_name="tt-user-tower", route_prefix="/user-tower")
    sl = scoring_layer_artifacts
    config["applications"] += serve_config(AppArgs(checkpoint=str(sl.checkpoint), num_cpus=0.05), index=str(sl.index),
                                           app_name="tt-scoring-layer", route_prefix="/scoring-layer")["applications"]
    deploy_config(config, dashboard)                      # returns at once; replicas start in the background
    tri = trilinear_artifacts
    serve.run(build_app({"checkpoint": str(tri.checkpoint), "index": str(tri.index), "num_cpus": 0.05}),
              name="tt-trilinear", route_prefix="/trilinear")
    wait_ready(f"{base}/user-tower", timeout_s=300)
    wait_ready(f"{base}/scoring-layer", timeout_s=300)
    yield Apps(f"{base}/user-tower", f"{base}/trilinear", f"{base}/scoring-layer", ut, tri, sl, config, dashboard)
    for name in ("tt-trilinear", "tt-user-tower", "tt-scoring-layer"):
        serve.delete(name)


@pytest.fixture(scope="session")
def ops_app(serve_http, trilinear_artifacts, tmp_path_factory):
    """``twotower serve`` (the CLI, a subprocess joined to the session's Ray) serving the trilinear model at
    ``/ops`` from a config written by ``--write-config`` and edited as an operator would: a small Ingress
    capacity (2 ongoing + 4 queued requests) and a query encoder that autoscales 1 -> 2 replicas after 1 s
    of load (target 0.2 ongoing requests per replica) and back after 2 s idle. Yields :class:`serve_helpers.CliApp`; ``test_serve_operations`` ends
    it with SIGTERM (its last test), else it is stopped here."""
    import ray
    import yaml

    from twotower.jobs import serve as serve_job

    art, (base, options) = trilinear_artifacts, serve_http
    config = tmp_path_factory.mktemp("ops") / "serve.yaml"
    assert serve_job.main(["--index", str(art.index), "--checkpoint", str(art.checkpoint), "--dataset", str(art.dataset),
                           "--port", str(options["port"]), "--num-cpus", "0.05", "--app-name", "tt-ops",
                           "--route-prefix", "/ops", "--max-encoder-replicas", "2", "--max-shard-replicas", "1",
                           "--max-queued-requests", "4", "--write-config", str(config)]) == 0
    doc = yaml.safe_load(config.read_text())
    for d in doc["applications"][0]["deployments"]:
        if d["name"] == "Ingress":
            d["max_ongoing_requests"] = 2
        if d["name"] == "QueryEncoder":
            d["autoscaling_config"].update(target_ongoing_requests=0.2, upscale_delay_s=1, downscale_delay_s=2,
                                           look_back_period_s=2, metrics_interval_s=0.5)
    config.write_text(yaml.safe_dump(doc))
    app = start_cli(["--config", str(config), "--address", ray.get_runtime_context().gcs_address],
                    "serving tt-ops at", f"{base}/ops", "tt-ops")
    yield app
    app.stop()
