"""Security defaults of serving: the serving loaders refuse a tampered index or checkpoint (sha256 checked
before use, error naming the file), and ``twotower serve`` started on its own (its own local Ray) listens
on loopback addresses only: Ray's services and the Serve HTTP proxy, except the inter-deployment gRPC
server of each Serve replica, which Ray Serve 2.60 binds to all interfaces (see the test)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
import requests
from serve_helpers import free_port, wait_for_cli_ready

from twotower.distributed.local_ray import is_loopback, listening_sockets
from twotower.index.manifest import IndexFormatError, Manifest
from twotower.model.checkpoint import CheckpointError, read_checkpoint
from twotower.serve.loading import load_encoder
from twotower.serve.shards import ShardStore


def _flip(path) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_serving_loaders_refuse_tampered_index_and_checkpoint(user_tower_artifacts, tmp_path):
    art = user_tower_artifacts
    index = shutil.copytree(art.index, tmp_path / "index")
    shard_file = Manifest.read(str(index)).shards[1].index_file
    _flip(index / shard_file)
    assert ShardStore(0).load(str(index))                                  # shard 0 untouched: loads
    with pytest.raises(IndexFormatError, match=rf"{shard_file}: sha256 mismatch"):
        ShardStore(1).load(str(index))
    ckpt = shutil.copytree(art.checkpoint, tmp_path / "checkpoint")
    _flip(ckpt / "model.pt")
    with pytest.raises(CheckpointError, match=r"model\.pt: sha256 mismatch"):
        load_encoder(read_checkpoint(ckpt), art.dataset)


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_standalone_serve_listens_on_loopback_only(user_tower_artifacts):
    art, port = user_tower_artifacts, free_port()
    cmd = [sys.executable, "-m", "twotower.jobs.serve", "--index", str(art.index), "--checkpoint", str(art.checkpoint),
           "--dataset", str(art.dataset), "--port", str(port), "--num-cpus", "0.05"]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_for_cli_ready(proc, "serving twotower at")
        r = requests.post(f"http://127.0.0.1:{port}/v1/recommend", json={"user_id": "1", "k": 3}, timeout=60)
        assert r.status_code == 200, r.text
        sockets = listening_sockets(proc.pid)
        names = {name for _, name, _, _ in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets
        assert any(p == port and is_loopback(ip) for _, _, ip, p in sockets), sockets   # the Serve HTTP proxy
        exposed = [s for s in sockets if not is_loopback(s[2])]
        # The one exception (README, security notes): Ray Serve 2.60 starts an inter-deployment gRPC server
        # in every replica on "[::]:0", hard-coded (ray/serve/_private/replica.py, _on_initialized), token-
        # authenticated when Ray's token auth is on. Exactly one such socket per replica, nothing else.
        replicas = sorted(pid for pid, name, _, _ in sockets if name.startswith("ray::ServeReplica:"))
        assert len(set(replicas)) == 4                                  # Ingress, QueryEncoder, 2 searchers
        assert sorted(pid for pid, name, ip, _ in exposed if name.startswith("ray::ServeReplica:")
                      and ip in ("::", "0.0.0.0")) == sorted(set(replicas)), exposed
        others = [s for s in exposed if not s[1].startswith("ray::ServeReplica:")]
        assert not others, f"listening on a non-loopback address (pid, process, ip, port): {others}"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
