"""``twotower serve``: config file generation, input errors, the shipped example, and a real run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from ray.serve.schema import ServeDeploySchema

from twotower.jobs import serve as serve_job
from twotower import storage
from twotower.serve.app import build_app
from twotower.serve.config import AppArgs

from serve_helpers import assert_same_ranking, wait_for_cli_ready

EXAMPLE = Path(__file__).resolve().parents[2] / "serve" / "config.example.yaml"


def test_write_config_is_a_valid_serve_deploy_file(user_tower_artifacts, tmp_path):
    art = user_tower_artifacts
    out = tmp_path / "serve.yaml"
    assert serve_job.main(["--index", str(art.index), "--checkpoint", str(art.checkpoint), "--dataset",
                           str(art.dataset), "--port", "8123", "--shard-replicas", "2", "--write-config", str(out)]) == 0
    config = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(config)
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8123}
    app = config["applications"][0]
    assert app["import_path"] == "twotower.serve.app:build_app" and "index" not in app["args"]
    searchers = [d for d in app["deployments"] if d["name"].startswith("Searcher")]
    assert [d["name"] for d in searchers] == ["Searcher0", "Searcher1"]
    assert all(d["user_config"]["index_dir"] == str(art.index.resolve()) for d in searchers)
    assert all(d["num_replicas"] == "auto" and d["autoscaling_config"]["min_replicas"] == 2 and
               d["autoscaling_config"]["max_replicas"] == 4 for d in searchers)
    ingress = app["deployments"][0]
    assert ingress["name"] == "Ingress" and ingress["max_queued_requests"] == 256
    assert ingress["backpressure_config"] == {"status_code": 503, "retry_after_s": 2}
    built = build_app(app["args"])                       # what Serve does with import_path + args
    assert built is not None


def test_write_config_colocate_autoscales_the_ingress_alone(user_tower_artifacts, tmp_path):
    art = user_tower_artifacts
    out = tmp_path / "serve.yaml"
    assert serve_job.main(["--index", str(art.index), "--checkpoint", str(art.checkpoint), "--colocate",
                           "--max-ingress-replicas", "3", "--write-config", str(out)]) == 0
    config = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(config)
    app = config["applications"][0]
    assert app["args"]["colocate"] is True and [d["name"] for d in app["deployments"]] == ["Ingress"]
    ingress = app["deployments"][0]
    assert ingress["num_replicas"] == "auto" and ingress["user_config"]["index_dir"] == str(art.index.resolve())
    assert (ingress["autoscaling_config"]["min_replicas"], ingress["autoscaling_config"]["max_replicas"]) == (1, 3)


def test_shipped_example_config_validates():
    config = yaml.safe_load(EXAMPLE.read_text())
    ServeDeploySchema.model_validate(config)
    app = config["applications"][0]
    AppArgs.model_validate(app["args"])
    assert config["http_options"]["host"] == "127.0.0.1"


def test_bad_inputs_exit_2(user_tower_artifacts, trilinear_artifacts, tmp_path, capsys):
    ut, tri = user_tower_artifacts, trilinear_artifacts
    assert serve_job.main(["--index", str(tmp_path), "--checkpoint", str(ut.checkpoint)]) == 2
    assert "manifest.json" in capsys.readouterr().err
    assert serve_job.main(["--index", str(ut.index), "--checkpoint", str(tmp_path)]) == 2
    assert "checkpoint.json" in capsys.readouterr().err
    assert serve_job.main(["--index", str(tri.index), "--checkpoint", str(ut.checkpoint)]) == 2
    assert "built from checkpoint" in capsys.readouterr().err
    assert serve_job.main(["--checkpoint", str(ut.checkpoint)]) == 2


def test_write_user_cache(trilinear_artifacts, tmp_path, s3_store):
    from twotower.model.checkpoint import read_checkpoint
    from twotower.serve.loading import load_encoder
    from twotower.serve.user_cache import UserCacheError
    art = trilinear_artifacts
    info = read_checkpoint(art.checkpoint)
    assert serve_job.main(["--checkpoint", str(art.checkpoint), "--write-user-cache", str(tmp_path / "uc")]) == 0
    enc = load_encoder(info, art.dataset, user_cache=tmp_path / "uc")
    fresh = load_encoder(info, art.dataset)
    assert (enc.user_cache == fresh.user_cache).all()
    uri = f"{s3_store}/user-cache/uc"                                # the same through an object store
    assert serve_job.main(["--checkpoint", str(art.checkpoint), "--write-user-cache", uri]) == 0
    assert storage.read_bytes(f"{uri}/user_cache.npy") == (tmp_path / "uc" / "user_cache.npy").read_bytes()
    assert (load_encoder(info, art.dataset, user_cache=uri).user_cache == fresh.user_cache).all()
    storage.write_bytes(f"{uri}/user_cache.npy", b"tampered")
    with pytest.raises(UserCacheError, match=rf"^{uri}/user_cache.npy: sha256 mismatch"):
        load_encoder(info, art.dataset, user_cache=uri)


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_cli_serves_until_interrupted(serve_apps, serve_http, s3_store, tmp_path):
    """``python -m twotower.jobs.serve`` joined to the test cluster, with its checkpoint, index, dataset
    and user cache on S3: deploys, answers exactly like the trilinear app served from local paths, and
    removes its application on Ctrl-C (SIGINT)."""
    import ray
    base, options = serve_http
    art = serve_apps.trilinear                                   # 1 shard: the fewest replicas to start
    uri = f"{s3_store}/serve-cli"
    for name, local in (("checkpoint", art.checkpoint), ("index", art.index), ("dataset", art.dataset)):
        storage.upload_dir(local, f"{uri}/{name}")
    assert serve_job.main(["--checkpoint", f"{uri}/checkpoint", "--dataset", f"{uri}/dataset",
                           "--write-user-cache", f"{uri}/user-cache"]) == 0
    cmd = [sys.executable, "-m", "twotower.jobs.serve", "--index", f"{uri}/index", "--checkpoint",
           f"{uri}/checkpoint", "--dataset", f"{uri}/dataset", "--user-cache", f"{uri}/user-cache",
           "--port", str(options["port"]), "--num-cpus", "0.05",
           "--app-name", "tt-cli", "--route-prefix", "/cli", "--address", ray.get_runtime_context().gcs_address]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    try:
        wait_for_cli_ready(proc, "serving tt-cli at")
        body = {"user_id": "1", "k": 5, "context": {"timestamp": 893_286_638}}
        r = requests.post(f"{base}/cli/v1/recommend", json=body, timeout=60)
        local = requests.post(f"{serve_apps.trilinear_url}/v1/recommend", json=body, timeout=60)
        assert r.status_code == 200 and len(r.json()["items"]) == 5
        want = local.json()["items"]
        assert_same_ranking(r.json(), [it["item_id"] for it in want], np.array([it["score"] for it in want]))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert requests.post(f"{base}/cli/v1/recommend", json={"user_id": "1"}, timeout=60).status_code == 404
