"""Stall watchdog: pure-Python behaviour, plus the abort path the trainer uses (cancel a Ray task)."""
from __future__ import annotations

import threading
import time

import pytest

from twotower.distributed.watchdog import ProgressReporter, TrainingStalledError, run_with_watchdog


@pytest.mark.timeout(30)
def test_stall_aborts_and_raises():
    release = threading.Event()
    aborted = []

    def abort():
        aborted.append(time.time())
        release.set()

    start = time.time()
    with pytest.raises(TrainingStalledError, match="no training progress"):
        run_with_watchdog(lambda: release.wait(60), lambda: (start, {"stage": "train", "step": 3}),
                          stall_timeout_s=1.0, abort=abort, poll_s=0.1)
    assert len(aborted) == 1
    assert 1.0 <= aborted[0] - start < 5.0


@pytest.mark.timeout(30)
def test_progress_keeps_it_alive_and_returns_result():
    def work():
        time.sleep(1.5)
        return 42

    # the progress stamp is always "now": 1.5 s of work with a 0.5 s timeout must not stall
    assert run_with_watchdog(work, lambda: (time.time(), None), stall_timeout_s=0.5,
                             abort=lambda: pytest.fail("aborted"), poll_s=0.1) == 42


@pytest.mark.timeout(30)
def test_errors_of_the_work_propagate_and_tracker_errors_count_as_no_progress():
    def boom():
        raise ValueError("worker failed")

    with pytest.raises(ValueError, match="worker failed"):
        run_with_watchdog(boom, lambda: (time.time(), None), stall_timeout_s=5, abort=lambda: None, poll_s=0.1)

    def unreachable():
        raise ConnectionError("tracker gone")

    release = threading.Event()
    with pytest.raises(TrainingStalledError):
        run_with_watchdog(lambda: release.wait(60), unreachable, stall_timeout_s=0.5,
                          abort=release.set, poll_s=0.1)


def test_reporter_throttles_and_tolerates_no_tracker():
    calls = []

    class Tracker:
        class beat:
            @staticmethod
            def remote(info):
                calls.append(info)

    ProgressReporter(None).beat(step=1)                  # no tracker: nothing happens
    r = ProgressReporter(Tracker(), min_interval_s=60)
    r.beat(step=1)
    r.beat(step=2)                                       # throttled
    r.beat(force=True, step=3)
    assert calls == [{"step": 1}, {"step": 3}]


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_cancelling_a_hung_ray_task_ends_the_wait(ray_cluster):
    """The trainer's abort: force-cancel the task that runs ``TorchTrainer.fit``."""
    import ray

    from twotower.distributed.watchdog import ProgressTracker

    @ray.remote(num_cpus=0)
    def hang():
        time.sleep(600)

    tracker = ProgressTracker.remote()
    ref = hang.remote()
    t0 = time.time()
    with pytest.raises(TrainingStalledError) as info:
        run_with_watchdog(lambda: ray.get(ref), lambda: ray.get(tracker.last.remote(), timeout=10),
                          stall_timeout_s=3, abort=lambda: ray.cancel(ref, force=True), poll_s=0.5)
    assert time.time() - t0 < 60
    assert "starting" in str(info.value)                 # the tracker's last description is reported
    with pytest.raises(ray.exceptions.RayError):         # the task really was cancelled
        ray.get(ref, timeout=30)
    ray.kill(tracker)
