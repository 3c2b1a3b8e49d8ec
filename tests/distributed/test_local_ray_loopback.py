"""The local Ray runtime that training starts (``start_local_ray``) listens on loopback addresses only.

Runs in a subprocess: a fresh Ray started exactly as ``twotower train`` starts it (the session's
``ray_cluster`` fixture is a different, already initialised runtime), with a task and an actor running
so that worker processes (each a gRPC server) exist when the sockets are listed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from twotower.distributed.local_ray import is_loopback

pytestmark = [pytest.mark.ray]

SCRIPT = """
import json, os, ray
from twotower.distributed.config import TrainConfig
from twotower.distributed.local_ray import listening_sockets
from twotower.distributed.trainer import start_local_ray

assert start_local_ray(TrainConfig(num_workers=1))

@ray.remote
class Pinger:
    def ping(self):
        return os.getpid()

@ray.remote
def pid():
    return os.getpid()

actor = Pinger.remote()
ray.get([actor.ping.remote(), pid.remote()])
print("SOCKETS " + json.dumps(listening_sockets(os.getpid())), flush=True)
ray.shutdown()
"""


def test_is_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "127.0.1.1", "::1", "::ffff:127.0.0.1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.2", "::ffff:10.0.0.1"]))


@pytest.mark.timeout(300)
def test_start_local_ray_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=280)
    lines = [line for line in out.stdout.splitlines() if line.startswith("SOCKETS ")]
    assert out.returncode == 0 and lines, out.stdout[-2000:] + out.stderr[-3000:]
    sockets = json.loads(lines[0][len("SOCKETS "):])
    names = {name for _, name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names and len(sockets) >= 8, sockets    # really looked at Ray's servers
    exposed = [s for s in sockets if not is_loopback(s[2])]
    assert not exposed, f"listening on a non-loopback address (pid, process, ip, port): {exposed}"
