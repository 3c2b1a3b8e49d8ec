"""A real two-node Ray cluster on one host for tests: ``ray start --head`` plus ``ray start --address``.

Isolation from every other Ray runtime on the host (the pytest session's ``ray_cluster``, other test
processes, other users):

- each node gets its own ``--temp-dir``, so ``ray start`` writes its address file
  (``<temp-dir>/ray_current_cluster``) there and not to ``/tmp/ray/ray_current_cluster``, which a later
  ``ray.init()`` without an address would otherwise join; the test also checks that file is unchanged;
- every port is chosen free and passed explicitly; the dashboard and job server listen on 127.0.0.1
  (GCS and raylets use the host's IP: Ray replaces a loopback ``--node-ip-address`` with it);
- token auth with a fresh token of its own (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``) set only in the
  environment of the two ``ray start`` processes (job drivers inherit it); HTTP clients send it as
  ``Authorization: Bearer <token>``; this process's own Ray/auth state is never touched;
- ``RAY_ADDRESS`` is never set in this process (the job server sets it for its drivers);
- each node is a ``ray start --block`` process in its own process group; :meth:`stop` sends it SIGTERM
  (it then stops its raylet, GCS, dashboard, ...) and kills whatever is left in that group, by pid.

Processes run with ``sys.executable`` and this interpreter's ``bin`` first on ``PATH``, so job
entrypoints (``python -m ...``, ``twotower ...``) use the same installation as the tests.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

RAY_CLI = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    names = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port", "metrics-export-port")
    return [f"--{name}={free_port()}" for name in names]


class LocalCluster:
    """Head + one worker node on this host. Attributes: ``gcs_address``, ``dashboard_url``, ``token``."""

    def __init__(self, cpus_per_node: int = 3, object_store_bytes: int = 300 * 1024 * 1024):
        self.root = Path(tempfile.mkdtemp(prefix="ttc-", dir="/tmp"))   # short: Unix socket paths <= 107 chars
        self.token = secrets.token_hex(32)
        self.cpus, self.store = cpus_per_node, object_store_bytes
        self.gcs_address = f"127.0.0.1:{free_port()}"
        self.dashboard_url = f"http://127.0.0.1:{free_port()}"
        self.procs: list[subprocess.Popen] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0",
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
        self.env = env

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _start_node(self, name: str, args: list[str], n_alive: int, timeout: float, attempts: int = 4) -> None:
        """``ray start --block`` one node and wait for ``n_alive`` alive nodes; retried when its raylet
        aborted because its dashboard agent missed Ray 2.60's fixed 15 s port-file deadline (happens on a
        loaded 2-core host; ``RAY_agent_register_timeout_ms`` does not extend that wait in 2.60)."""
        for attempt in range(1, attempts + 1):
            temp = self.root / f"{name}{attempt}"
            temp.mkdir()
            cmd = RAY_CLI + ["start", "--block", f"--temp-dir={temp}",
                             f"--num-cpus={self.cpus}", f"--object-store-memory={self.store}",
                             "--disable-usage-stats", *_node_ports(), *args]
            log = open(self.root / f"{name}{attempt}.log", "wb")
            proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=self.root)
            log.close()
            self.procs.append(proc)
            try:
                self.wait_nodes(n_alive, timeout, temp)
                return
            except _AgentTimeout:
                if attempt == attempts:
                    raise
                self._stop_proc(proc)
                self.procs.remove(proc)

    def start(self, timeout: float = 180.0) -> "LocalCluster":
        """Start both nodes and wait until the state API lists 2 alive nodes; stops everything on failure."""
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> "LocalCluster":
        port = self.gcs_address.rsplit(":", 1)[1]
        dash_port = self.dashboard_url.rsplit(":", 1)[1]
        self._start_node("head", ["--head", f"--port={port}", "--dashboard-host=127.0.0.1",
                                  f"--dashboard-port={dash_port}", "--include-dashboard=true",
                                  f"--ray-client-server-port={free_port()}"], 1, timeout)
        self._start_node("worker", [f"--address={self.gcs_address}"], 2, timeout)
        return self

    def state(self, resource: str, **filters: str) -> list[dict]:
        """Rows of the state API (``/api/v0/<resource>``, e.g. nodes, actors), with equality filters."""
        params = [("limit", "10000"), ("detail", "1")]
        for key, value in filters.items():
            params += [("filter_keys", key), ("filter_predicates", "="), ("filter_values", value)]
        r = requests.get(f"{self.dashboard_url}/api/v0/{resource}", params=params, headers=self.headers, timeout=30)
        r.raise_for_status()
        return r.json()["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.state("nodes") if n["state"] == "ALIVE"]

    def wait_nodes(self, n: int, timeout: float, temp: Path | None = None) -> None:
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if temp is not None and any("Timed out waiting for file" in f.read_text(errors="replace")
                                        for f in temp.glob("session_*/logs/raylet.err")):
                raise _AgentTimeout(f"raylet in {temp} aborted: an agent did not report its port in time")
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"ray start exited with {p.returncode}:\n{self.logs()}")
            try:
                if len(self.alive_nodes()) >= n:
                    return
            except (requests.RequestException, KeyError, ValueError) as e:
                last = e
            time.sleep(1.0)
        raise TimeoutError(f"{n} Ray nodes not alive after {timeout:.0f}s ({last}):\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.root.glob("*.log"))

    def leftover_pids(self) -> list[int]:
        """Processes still running whose command line names this cluster's temp dir."""
        import psutil

        out = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if str(self.root) in " ".join(proc.info["cmdline"] or []):
                    out.append(proc.info["pid"])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    @staticmethod
    def _stop_proc(p: subprocess.Popen, timeout: float = 60.0) -> None:
        """SIGTERM one ``ray start --block`` process (it stops its node), then SIGKILL its process group."""
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)      # process group == the pid we started (start_new_session)
        except ProcessLookupError:
            pass
        p.wait(10)

    def stop(self) -> None:
        """Stop the worker node, then the head (by the pids this object started), and any process of theirs
        left behind (found by this cluster's temp dir in its command line)."""
        for p in reversed(self.procs):
            self._stop_proc(p)
        deadline = time.monotonic() + 20
        while self.leftover_pids() and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in self.leftover_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not os.environ.get("TTC_KEEP_LOGS"):
            shutil.rmtree(self.root, ignore_errors=True)


class _AgentTimeout(RuntimeError):
    """A raylet aborted at start because an agent missed its port-file deadline (retryable)."""
