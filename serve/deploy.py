"""Deploying a Serve config the way ``serve deploy`` does, and waiting for the API to be ready.

:func:`deploy_config` sends the config to the Ray dashboard's Serve REST API (the same call as the
``serve deploy FILE -a DASHBOARD`` CLI), so applications deployed by ``twotower serve`` are declarative
and a later ``serve deploy`` of an edited file updates them in place (index swap = new
``user_config.index_dir`` for the searchers; see :mod:`twotower.serve.config`).
"""
from __future__ import annotations

import time

import requests

from .config import draining


def deploy_config(config: dict, dashboard_url: str, keep_others: bool = True) -> None:
    """PUT ``config`` (a ServeDeploySchema dict) to the dashboard at ``dashboard_url`` (``http://host:port``).

    A Serve config is the complete set of declaratively deployed applications: Serve deletes those not
    in it. With ``keep_others`` the applications already deployed from a config and not named in
    ``config`` are added to it unchanged, so deploying twotower never removes someone else's app.

    Raises:
        RuntimeError: the dashboard rejected the config (message from Serve).
    """
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    client = ServeSubmissionClient(dashboard_url if "://" in dashboard_url else f"http://{dashboard_url}")
    if keep_others:
        config = dict(config)
        ours = {app["name"] for app in config["applications"]}
        details = client.get_serve_details().get("applications") or {}
        others = [app["deployed_app_config"] for name, app in details.items()
                  if name not in ours and app.get("deployed_app_config") and app.get("status") != "DELETING"]
        config["applications"] = list(config["applications"]) + others
    client.deploy_applications(config)


def wait_ready(base_url: str, timeout_s: float = 300.0, want_version: str | None = None,
               poll_s: float = 0.5) -> dict:
    """Poll ``GET base_url/healthz`` until it answers 200 (and, with ``want_version``, every shard serves
    that index version). Returns the last health body.

    Raises:
        TimeoutError: not ready within ``timeout_s`` (the message has the last status seen).
    """
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{base_url.rstrip('/')}/healthz", timeout=10)
            last = f"{r.status_code} {r.text[:300]}"
            if r.status_code == 200:
                body = r.json()
                if want_version is None or body.get("index_versions") == [want_version]:
                    return body
        except requests.RequestException as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(poll_s)
    raise TimeoutError(f"{base_url}/healthz not ready after {timeout_s:.0f} s (last: {last})")


def drain(config: dict, dashboard_url: str, timeout_s: float = 30.0, poll_s: float = 0.05,
          settle: int = 3) -> bool:
    """Graceful stop, first half: deploy ``config`` with every application's Ingress draining (new requests
    get 503 + Retry-After) and wait until the Ingress answers ``settle`` polls in a row that it drains with
    no request in flight (with several Ingress replicas a poll reaches one of them). Deleting the
    application afterwards stops the encoder and searchers only once nothing needs them.

    Returns False when that did not happen within ``timeout_s`` (the caller deletes anyway).
    """
    from ray import serve

    for app in config["applications"]:
        config = draining(config, app["name"])
    deploy_config(config, dashboard_url)
    deadline = time.monotonic() + timeout_s
    for app in config["applications"]:
        handle, calm = serve.get_deployment_handle("Ingress", app["name"]), 0
        while calm < settle:
            if time.monotonic() > deadline:
                return False
            st = handle.drain_status.remote().result(timeout_s=max(0.1, deadline - time.monotonic()))
            calm = calm + 1 if st["draining"] and st["in_flight"] == 0 else 0
            time.sleep(poll_s)
    return True
