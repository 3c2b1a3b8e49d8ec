"""Loopback-only defaults for the local Ray runtimes that twotower starts itself.

By default ``ray.init()`` on Linux picks the host's routable IP as the node address, and Ray's gRPC
servers (GCS, raylet / object manager, every worker and driver), the dashboard agent, the runtime-env
agent and the metrics exporters then listen on all interfaces (``0.0.0.0`` / ``::``) or on that IP:
anyone who can reach the host can talk to the cluster. ``ray.init(_node_ip_address="127.0.0.1")`` does
not help (Ray 2.60 replaces a loopback ``_node_ip_address`` with the routable IP,
``ray._private.services.resolve_ip_for_localhost``).

What does work is Ray's single-node mode, the one it uses by default on macOS and Windows: with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (despite the name, honoured on every platform) the node IP is
127.0.0.1, the C++ gRPC servers bind to 127.0.0.1 only, and the agents and metrics exporters follow
the node IP. Other nodes cannot join such a runtime, which is the point for a laptop or a test run.

To listen elsewhere (a head node that workers join): start the cluster with ``ray start`` and pass
``RAY_ADDRESS`` / ``--address`` (twotower then joins it and changes nothing), or set
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` before starting twotower.

:func:`start_ray` is the one way every job (train, index, serve) starts or joins Ray.
"""
from __future__ import annotations

import logging
import os

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
OBJECT_STORE_CAP = 2 << 30       # local runtimes: min(2 GiB, 30% of RAM) of shared memory for Ray Data blocks


def start_ray(*, min_cpus: int = 1, dashboard: bool = False, log_to_driver: bool = True,
              address: str | None = None):
    """``ray.init`` for a twotower job, unless Ray is already initialised in this process.

    With ``address`` or ``RAY_ADDRESS`` set, that cluster is joined and nothing about it is changed.
    Otherwise a local runtime starts, loopback-only (:func:`use_loopback_only`), with
    ``max(os.cpu_count(), min_cpus)`` logical CPUs (callers ask for more than the cores so that Ray
    Data tasks always find CPUs beside training workers or actor pools: with exactly as many CPUs as
    workers the data pipeline starves and ``fit`` hangs) and an object store of
    ``min(OBJECT_STORE_CAP, 30% of RAM)`` bytes. ``dashboard``: start the dashboard on 127.0.0.1 (Ray
    Train's placement-group cleaner and Serve's declarative deploy need its API).

    Returns:
        The ``RayContext`` when this call started or joined Ray (the caller then owns it and calls
        ``ray.shutdown()``), None when Ray was already initialised (e.g. a test fixture).
    """
    import ray

    if ray.is_initialized():
        return None
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        return ray.init(address=address, logging_level=logging.WARNING, log_to_driver=log_to_driver)
    use_loopback_only()
    total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ray.init(num_cpus=max(os.cpu_count() or 1, min_cpus), include_dashboard=dashboard,
                    dashboard_host="127.0.0.1", logging_level=logging.WARNING, log_to_driver=log_to_driver,
                    object_store_memory=int(min(OBJECT_STORE_CAP, 0.3 * total_ram)))


def use_loopback_only() -> bool:
    """Make the next local ``ray.init()`` of this process start a loopback-only runtime.

    Sets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` for the processes Ray starts, and Ray's constant read
    from it at import time in this process (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``), unless
    the variable is already set (an explicit choice, kept as is) or ``RAY_ADDRESS`` is (``ray.init()``
    joins that cluster). Call it only before a ``ray.init`` that starts a new local runtime, not before
    ``ray.init(address=...)``.

    Returns:
        True when the runtime will be loopback-only, False when the user asked for a cluster node.
    """
    if os.environ.get("RAY_ADDRESS"):         # ray.init() will join that cluster: not ours to configure
        return False
    if os.environ.get(LOOPBACK_ENV, "").strip():
        return os.environ[LOOPBACK_ENV].strip().lower() not in ("1", "true")     # Ray's own parsing
    os.environ[LOOPBACK_ENV] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    return True


def listening_sockets(root_pid: int) -> list[tuple[int, str, str, int]]:
    """Listening TCP sockets of process ``root_pid`` and all its descendants (the processes a local
    ``ray.init`` starts are: GCS, raylet, dashboard, agents, workers).

    Returns:
        ``(pid, process name, ip, port)`` per socket, sorted; processes that exit meanwhile are skipped.
    """
    import ray  # noqa: F401  (Ray ships psutil in ray/thirdparty_files and puts it on sys.path)
    import psutil

    root = psutil.Process(root_pid)
    out = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            conns, name = proc.net_connections(kind="tcp"), proc.name()
        except psutil.Error:
            continue
        out += [(proc.pid, name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return sorted(out)


def is_loopback(ip: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    import ipaddress

    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback
