"""Fail a training run that stops making progress instead of letting it hang.

Rank 0 reports progress (every training step and validation batch, throttled to one message per
``ProgressReporter.min_interval_s``) to a small ``ProgressTracker`` actor; the driver runs the fit
in a background thread and polls the tracker. When nothing arrived for ``stall_timeout_s``, the
watchdog calls ``abort()`` (the trainer force-cancels the Ray task that owns the Train controller,
which takes the controller and its workers down) and raises :class:`TrainingStalledError`.

The actor works for multi-node clusters and remote storage alike (no shared files needed). The
time before the first report (actor start-up, dataset set-up) counts as "no progress" too.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable

import ray


class TrainingStalledError(RuntimeError):
    """No training progress for ``stall_timeout_s`` seconds; the run was aborted."""


@ray.remote(num_cpus=0)
class ProgressTracker:
    """Holds the time (``time.time()``, seconds) and a description of the last progress report, and the
    console lines rank 0 sent (epoch summaries, resume and early-stopping notes) for the driver to show."""

    def __init__(self) -> None:
        self._last = time.time()
        self._info: dict[str, Any] = {"stage": "starting"}
        self._lines: list[str] = []

    def beat(self, info: dict[str, Any] | None = None) -> None:
        self._last = time.time()
        if info:
            self._info = dict(info)

    def say(self, line: str) -> None:
        """Queue a console line (counts as progress)."""
        self._last = time.time()
        self._lines.append(line)

    def last(self) -> tuple[float, dict[str, Any]]:
        return self._last, self._info

    def poll(self, lines_seen: int = 0) -> tuple[float, dict[str, Any], list[str]]:
        """``last()`` plus the console lines after the first ``lines_seen``."""
        return self._last, self._info, self._lines[lines_seen:]


class ProgressReporter:
    """Worker-side helper: ``beat(**info)`` sends at most one fire-and-forget message per interval;
    ``say(line)`` sends a console line to the driver (printed to stdout when there is no tracker).

    ``tracker`` may be None (no watchdog), then ``beat`` does nothing.
    """

    def __init__(self, tracker: "ray.actor.ActorHandle | None", min_interval_s: float = 2.0):
        self.tracker, self.min_interval_s, self._sent = tracker, min_interval_s, 0.0

    def beat(self, force: bool = False, **info: Any) -> None:
        now = time.monotonic()
        if self.tracker is not None and (force or now - self._sent >= self.min_interval_s):
            self._sent = now
            self.tracker.beat.remote(info)

    def say(self, line: str) -> None:
        if self.tracker is not None:
            self.tracker.say.remote(line)
        else:       # not print: Ray Train patches print in workers to log through its logger (lines twice)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


def run_with_watchdog(fn: Callable[[], Any], last_progress: Callable[[], tuple[float, Any]],
                      stall_timeout_s: float, abort: Callable[[], None], poll_s: float = 5.0,
                      abort_grace_s: float = 60.0) -> Any:
    """Run ``fn()`` in a daemon thread and return its result, or fail when progress stops.

    Args:
        fn: the blocking work (e.g. ``lambda: ray.get(fit_ref)``); its exception is re-raised here.
        last_progress: returns ``(unix_time_of_last_progress, description)``; polled every ``poll_s``
            seconds. An exception from it counts as no progress (it is retried on the next poll).
        stall_timeout_s: seconds without progress after which the run is aborted.
        abort: called once on a stall; must make ``fn`` return or raise soon.
        abort_grace_s: how long to wait for ``fn`` to finish after ``abort()`` before giving up on it.

    Raises:
        TrainingStalledError: no progress for ``stall_timeout_s`` (after ``abort()`` was called).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name="twotower-fit", daemon=True)
    started = last_seen = time.time()
    info: Any = None
    thread.start()
    while True:
        thread.join(timeout=poll_s)
        if not thread.is_alive():
            break
        try:
            stamp, info = last_progress()
            last_seen = max(last_seen, stamp)
        except Exception:  # noqa: BLE001 - an unreachable tracker is just "no progress"
            pass
        idle = time.time() - last_seen
        if idle > stall_timeout_s:
            abort()
            thread.join(timeout=abort_grace_s)
            raise TrainingStalledError(
                f"no training progress for {idle:.0f} s (stall_timeout_s={stall_timeout_s:g}, "
                f"run time {time.time() - started:.0f} s); last progress: {info}. The run was aborted. "
                "Typical causes: a worker stuck in a collective (unequal step counts), a dataset "
                "that yields no batches, or too few CPUs for both the workers and Ray Data.") from box.get("error")
    if "error" in box:
        raise box["error"]
    return box.get("result")
