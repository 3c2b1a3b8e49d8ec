"""The jobs run unchanged as submitted Ray jobs on a real two-node cluster (two raylets on one host).

``ray start --head`` + ``ray start --address`` (see ``cluster_helpers.py`` for how the cluster is isolated
from the pytest session's own Ray runtime), then prepare (a team's tables declared in a spec, both on the
object store, hash-shuffled in 9 partitions across the nodes) -> train -> index -> evaluate submitted through
the Job Submission API over HTTP with the repository as ``working_dir``, exactly as
``ray job submit --working-dir . -- <entrypoint>`` does. Training uses 2 workers with
``placement_strategy=SPREAD``; the state API must show its RayTrainWorker actors on both nodes.

As on a real cluster, whose nodes share no disk, every input and output is a URI on an object store:
the session's S3 server (``s3_store``, whose endpoint and credentials both nodes inherit from this
process's environment). Nothing is read from or written to a local path.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from cluster_helpers import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")    # what a bare ray.init() would join
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}

pytestmark = pytest.mark.ray


def run_job(client, entrypoint: str, timeout: float) -> str:
    """Submit ``entrypoint`` with the repository as working_dir, wait until it ends; returns its logs.
    Fails the test (with the job's logs) unless it SUCCEEDED within ``timeout`` seconds."""
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(ROOT)})
    deadline = time.monotonic() + timeout
    status = client.get_job_status(job_id)
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    if status not in TERMINAL:
        client.stop_job(job_id)
    assert status == "SUCCEEDED", f"job {entrypoint!r} ended {status} (timeout {timeout:.0f}s); logs:\n{logs[-6000:]}"
    return logs


@pytest.mark.timeout(900)
def test_prepare_train_index_evaluate_as_jobs_on_two_nodes(s3_store):
    from ray.job_submission import JobSubmissionClient

    from twotower.data.synthetic import write_synthetic_tables
    from twotower.evaluation import evaluate
    from twotower.index import Manifest, ShardedIndex
    from twotower import storage

    address_before = ADDRESS_FILE.read_text() if ADDRESS_FILE.exists() else None
    cluster = LocalCluster(cpus_per_node=3).start()
    try:
        nodes = {n["node_id"] for n in cluster.alive_nodes()}
        assert len(nodes) == 2
        client = JobSubmissionClient(cluster.dashboard_url, headers=cluster.headers)
        base = f"{s3_store}/two-node"
        data, runs, index, eval_json = f"{base}/data", f"{base}/runs", f"{base}/index", f"{base}/eval.json"

        tables, _ = write_synthetic_tables(f"{base}/tables", 300, 120, 9000, history_length=10, block_rows=1000)
        storage.write_bytes(f"{base}/tables/spec.yaml", yaml.safe_dump(
            tables.model_dump(mode="json", exclude_defaults=True)).encode())
        logs = run_job(client, f"twotower prepare table --spec {base}/tables/spec.yaml --out {data}", timeout=240)
        assert "group (1 files -> 9 partitions)" in logs
        logs = run_job(client, f"twotower train --dataset {data} --num-workers 2 --epochs 1 --out {runs} "
                               f"--run-name two-node batch_size=64 max_steps_per_epoch=4 hidden_dims=[16] "
                               f"eval_ks=[10] placement_strategy=SPREAD", timeout=420)
        assert "best checkpoint:" in logs
        run_job(client, f"python -m twotower.jobs.index --checkpoint {runs}/two-node/best_checkpoint "
                        f"--dataset {data} --out {index} --shards 2 --actors 2 --batch-size 64", timeout=240)
        logs = run_job(client, f"twotower evaluate --checkpoint {runs}/two-node/best_checkpoint --dataset {data} "
                               f"--ks 10 --index {index} --out {eval_json}", timeout=180)

        # training used both nodes: the state API (over HTTP, with the token) lists the RayTrainWorker actors
        # by worker group (placement group); a loaded host can make Ray Train restart a slow-starting group,
        # so every group started must hold 2 workers, one per node
        groups: dict[str, list[str]] = {}
        for w in cluster.state("actors", class_name="RayTrainWorker"):
            groups.setdefault(w["placement_group_id"], []).append(w["node_id"])
        assert groups, "no RayTrainWorker actors found"
        for placement_group, node_ids in groups.items():
            assert sorted(node_ids) == sorted(nodes), f"worker group {placement_group} ran on {node_ids}"
    finally:
        cluster.stop()
    assert not cluster.leftover_pids()
    assert (ADDRESS_FILE.read_text() if ADDRESS_FILE.exists() else None) == address_before

    # artifacts written by the jobs, all in the bucket
    summary = json.loads(storage.read_text(f"{runs}/two-node/summary.json"))
    assert summary["epochs_run"] == 1 and summary["best_epoch"] == 1 and summary["dataset_dir"] == data
    assert summary["best_checkpoint"] == f"{runs}/two-node/best_checkpoint"
    assert {"config.yaml", "metrics.csv", "training_curves.png", "best_checkpoint/checkpoint.json",
            "epoch_0001/model.pt"} <= set(storage.list_files(f"{runs}/two-node"))
    manifest = Manifest.read(index)
    assert len(manifest.shards) == 2 and manifest.num_items == 120
    assert ShardedIndex.load(index).num_items == 120          # verifies every file's sha256
    result = json.loads(storage.read_text(eval_json))
    assert result["num_queries"] == 300 and result["index_recall@10"] == pytest.approx(1.0)
    # the evaluate job's metrics from URIs equal an in-process evaluation of local copies
    (checkpoint, _), (dataset, _) = storage.local_copy(summary["best_checkpoint"]), storage.local_copy(data)
    try:
        assert evaluate(checkpoint, dataset, split="test", ks=[10])["model"] == result["model"]
    finally:
        shutil.rmtree(checkpoint), shutil.rmtree(dataset)
