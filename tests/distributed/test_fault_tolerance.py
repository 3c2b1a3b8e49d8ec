"""A training run survives the loss of a worker process (Ray Train FailureConfig + per-epoch checkpoints).

The test (not the training code) SIGKILLs one RayTrainWorker process in the middle of epoch 2 and
checks that Ray Train restarted the worker group, the loop continued after the epoch-1 checkpoint,
every epoch appears once in the history, and the final metric matches an undisturbed run.

When to kill: Ray Train registers an epoch's checkpoint in the controller only after every worker
reported it (a worker killed earlier, e.g. during the checkpoint upload, makes the run resume from
the previous checkpoint and redo the epoch). The killer waits until the controller's
checkpoint-manager snapshot (``checkpoint_manager_snapshot.json`` in the run directory, a Ray
internal written right after registration) names ``epoch_0001`` as the latest checkpoint and kills
at once (see ``WorkerKiller``). It records the latest registered checkpoint right after the kill,
so an unexpected timing shows up as a clear assertion rather than a confusing one.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from twotower.distributed.config import TrainConfig
from twotower.distributed.trainer import TwoTowerTrainer

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

EPOCHS = 4


def _config(tmp_path, run_name: str) -> TrainConfig:
    return TrainConfig.model_validate(dict(
        num_workers=2, batch_size=256, epochs=EPOCHS, patience=0, storage_path=str(tmp_path), run_name=run_name,
        max_steps_per_epoch=30, stall_timeout_s=240, lr=0.005, max_failures=2,
        train_cache_gib=0,        # every pass streams (epoch 4 starts pass 2): test_trainer covers the cache
        model={"hidden_dims": [64], "final_embedding_dim": 32}))


def _latest_registered(run_dir: Path) -> tuple[str | None, dict]:
    """(dir name, metrics) of the latest checkpoint Ray Train's controller registered, from its snapshot."""
    try:
        latest = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())["latest_checkpoint_result"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, {}
    return (latest["checkpoint_dir_name"], latest["metrics"]) if latest else (None, {})


def _train_worker_pids() -> list[int]:
    """Pids of this Ray cluster's live training workers (state API; other Ray instances on the host are ignored)."""
    import ray
    from ray.util.state import list_actors

    ours = {n["NodeID"] for n in ray.nodes()}
    actors = list_actors(address=ray.get_runtime_context().gcs_address, timeout=30,
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return sorted(a.pid for a in actors if a.pid and a.node_id in ours)


class WorkerKiller(threading.Thread):
    """SIGKILLs one training worker as soon as the controller registered the epoch-1 checkpoint.

    The worker pids are looked up beforehand, so the kill follows the registration within ~50 ms:
    the workers are then inside epoch 2 (they continue right after reporting), and epoch 2 cannot be
    registered before the controller's next poll (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 2 s; one
    report per worker per poll). ``latest_at_kill`` (read right after the kill) and
    ``epoch2_started_upload`` show where the kill landed.
    """

    def __init__(self, run_dir: Path, timeout_s: float = 400):
        super().__init__(daemon=True, name="worker-killer")
        self.run_dir, self.timeout_s = run_dir, timeout_s
        self.killed_pid: int | None = None
        self.latest_at_kill: str | None = None
        self.epoch2_started_upload: bool | None = None
        self.error: str | None = None

    def run(self) -> None:
        deadline, pids = time.time() + self.timeout_s, []
        while time.time() < deadline:
            if len(pids) != 2:
                pids = _train_worker_pids()
            name, _ = _latest_registered(self.run_dir)
            if name == "epoch_0001":
                if len(pids) != 2:
                    self.error = f"expected 2 training worker processes, found {pids}"
                    return
                os.kill(pids[-1], signal.SIGKILL)
                self.killed_pid = pids[-1]
                self.latest_at_kill = _latest_registered(self.run_dir)[0]
                self.epoch2_started_upload = (self.run_dir / "epoch_0002").exists()
                return
            if name is not None:
                self.error = f"epoch 1 was not seen as the latest checkpoint (now {name})"
                return
            time.sleep(0.05 if len(pids) == 2 else 0.5)
        self.error = "epoch 1 was never registered"


@pytest.fixture(scope="module")
def undisturbed(ray_cluster, synthetic_dataset, tmp_path_factory):
    return TwoTowerTrainer(_config(tmp_path_factory.mktemp("runs"), "undisturbed")).fit(synthetic_dataset)


def test_each_worker_computes_on_its_share_of_the_cores(undisturbed):
    # Ray starts every worker with OMP_NUM_THREADS=1 (cpus_per_worker 1); the loop sets torch's threads
    # to the cores this process may use / the workers on the node (TrainConfig.torch_threads: null)
    assert undisturbed.torch_threads == [max(1, len(os.sched_getaffinity(0)) // 2)] * 2


def test_worker_killed_in_epoch_2_resumes_from_epoch_1_checkpoint(undisturbed, synthetic_dataset, tmp_path,
                                                                  capfd):
    cfg = _config(tmp_path, "killed")
    killer = WorkerKiller(tmp_path / "killed")
    killer.start()
    started = time.time()
    result = TwoTowerTrainer(cfg).fit(synthetic_dataset)
    killer.join(timeout=5)

    assert killer.error is None, killer.error
    assert killer.killed_pid is not None and killer.latest_at_kill == "epoch_0001"
    assert result.resumed_after_epochs == [1]                     # restarted once, from the epoch-1 checkpoint
    out = capfd.readouterr().out
    print(f"killed pid {killer.killed_pid}; latest registered checkpoint right after the kill: "
          f"{killer.latest_at_kill}; epoch_0002 upload started: {killer.epoch2_started_upload}")
    print("\n".join(line for line in out.splitlines() if "resuming" in line or " done: " in line))
    assert "resuming after epoch 1 from the run's checkpoint after a worker failure (epoch_0001)" in out
    assert [h["epoch"] for h in result.history] == list(range(1, EPOCHS + 1))   # none twice, none skipped
    assert [h["epoch"] for h in undisturbed.history] == list(range(1, EPOCHS + 1))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["resumed_after_epochs"] == [1] and summary["epochs_run"] == EPOCHS
    assert undisturbed.resumed_after_epochs == []

    # same data, same steps: the final metric matches the undisturbed run's (dropout/negatives RNG
    # and the dynamic streaming_split assignment differ, so not bit for bit)
    final, reference = result.history[-1]["valid_recall@10"], undisturbed.history[-1]["valid_recall@10"]
    print(f"final valid_recall@10: killed run {final:.4f}, undisturbed {reference:.4f}; killed fit took "
          f"{time.time() - started:.0f} s")
    assert final == pytest.approx(reference, abs=0.03)
    first = result.history[0]["valid_recall@10"]                  # epoch 1, before the kill
    assert first == pytest.approx(undisturbed.history[0]["valid_recall@10"], abs=0.04)   # early epochs vary more
