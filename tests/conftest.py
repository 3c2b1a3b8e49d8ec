"""Session-wide fixtures: one local Ray runtime, a real S3 store, and the prepared datasets shared by every test.

``ray_cluster`` starts Ray once per test session (a Ray start costs ~10-15 s on a 2-core machine) and
shuts it down at the end. It has 4 logical CPUs (2 training workers + 2 for Ray Data tasks; with
only as many CPUs as workers, Ray Data starves and ``fit`` hangs), a 500 MB object store, and the
dashboard on: Ray Train V2's placement-group cleaner polls the state API that the dashboard serves
(without it, it logs a warning every second and cannot clean up after a killed controller).

The prepared datasets need Ray (the prepare job runs on Ray Data), so they depend on ``ray_cluster``.

``s3_store`` is a real S3-compatible server (moto's, in a thread of this process) on 127.0.0.1 with
one bucket; it exports ``AWS_ENDPOINT_URL`` and test credentials, so plain ``s3://twotower-test/...``
URIs work through pyarrow, Ray Data and every twotower job. ``ray_cluster`` depends on it: Ray's
workers inherit the environment of the process that starts Ray, so the store must exist first.
"""
from __future__ import annotations

import logging
import os

import pytest


@pytest.fixture(scope="session")
def s3_store():
    """Base URI ``s3://twotower-test`` of the session's S3 server (see the module docstring)."""
    from s3_server import s3_server

    with s3_server() as (base, _env):
        yield base


@pytest.fixture(scope="session")
def ray_cluster(s3_store):
    """The local Ray runtime shared by all Ray tests (yields ``ray.cluster_resources()``)."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=4, object_store_memory=500 * 1024 * 1024, include_dashboard=True,
                 logging_level=logging.WARNING)
        started = True
    yield ray.cluster_resources()
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory, ray_cluster):
    """Small synthetic dataset: 2000 users, 500 items, 60k interactions, history length 20."""
    from twotower.distributed.sources import prepare_synthetic

    out = tmp_path_factory.mktemp("datasets") / "synthetic"
    prepare_synthetic(out, users=2000, items=500, interactions=60_000, seed=0, history_length=20)
    return out


@pytest.fixture(scope="session")
def ml100k_dataset(tmp_path_factory, ray_cluster):
    """MovieLens-100K prepared from ``$TWOTOWER_DATA_DIR`` or ``../shared/data`` (an error if absent)."""
    from twotower.data.locate import find_movielens
    from twotower.distributed.sources import prepare_movielens

    src = find_movielens("ml-100k", os.environ.get("TWOTOWER_DATA_DIR"), allow_download=False)
    out = tmp_path_factory.mktemp("datasets") / "ml-100k"
    prepare_movielens(out, "ml-100k", src=src)
    return out
