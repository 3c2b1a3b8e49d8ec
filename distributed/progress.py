"""Training progress on the driver: a tqdm bar in a terminal, plain lines in logs and CI.

Rank 0 sends its progress (epoch, step, rows, seconds into the epoch) to the stall watchdog's
``ProgressTracker`` at most every 2 s; the driver polls the tracker (``run_with_watchdog(...,
on_progress=...)``) and hands each report to :class:`TrainProgress`. In a terminal (``stream.isatty()``
and ``CI`` unset) that is one tqdm bar per epoch (steps done / steps per epoch, rows, examples/s, ETA of
the epoch and of the run); elsewhere (a log file, CI, ``ray job logs``) it is one plain line every
``plain_every_s`` seconds, so logs stay readable. The workers print one summary line per epoch.
"""
from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

from tqdm import tqdm


def _duration(seconds: float) -> str:
    """``"1:02:03"`` / ``"2:03"`` for a number of seconds (``"?"`` when unknown)."""
    if not seconds >= 0 or seconds == float("inf"):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class TrainProgress:
    """Renders rank 0's progress reports (see the module docstring).

    Args:
        epochs: the run's maximum epochs. steps_per_epoch: optimizer steps per worker and epoch.
        stream: where the bar or the plain progress lines go (default ``sys.stderr``); lines: where rank
            0's console lines go (default ``sys.stdout``). plain: force plain lines (None = decide from
            ``stream`` and ``CI``). plain_every_s: seconds between plain lines.
    """

    def __init__(self, epochs: int, steps_per_epoch: int, stream: IO[str] | None = None,
                 lines: IO[str] | None = None, plain: bool | None = None, plain_every_s: float = 30.0):
        self.epochs, self.steps = epochs, max(steps_per_epoch, 1)
        self.stream = stream if stream is not None else sys.stderr
        self.lines = lines if lines is not None else sys.stdout
        tty = bool(getattr(self.stream, "isatty", lambda: False)()) and not os.environ.get("CI")
        self.plain = (not tty) if plain is None else plain
        self.plain_every_s, self._last_line = plain_every_s, -float("inf")
        self.bar: tqdm | None = None
        self._epoch, self._closed, self.lines_seen = 0, 0, 0
        self._previous: tuple[int, int, float] | None = None

    def update(self, info: Any, lines: list[str] = ()) -> None:
        """Print rank 0's new console ``lines`` (above the bar), then show the report ``info``:
        ``{"stage": "train", "epoch", "step", "rows", "seconds"}`` (other stages and malformed reports
        only keep the bar as it is)."""
        if lines:                   # rank 0 speaks between epochs (summary, resume, early stop)
            self.close()
            self.lines.write("".join(line + "\n" for line in lines))
            self.lines.flush()
            self.lines_seen += len(lines)
        if not isinstance(info, dict) or info.get("stage") != "train":
            return
        epoch, step = int(info.get("epoch", 0)), int(info.get("step", 0))
        if epoch <= self._closed:   # a report older than the epoch's summary line
            return
        rows, seconds = int(info.get("rows", 0)), float(info.get("seconds", 0.0))
        rate = rows / seconds if seconds > 0 else 0.0
        step_s = self._seconds_per_step(epoch, step, seconds)
        eta_run = ((self.steps - step) + (self.epochs - epoch) * self.steps) * step_s
        text = f"rows {rows:,}, {rate:,.0f} examples/s, run ETA <= {_duration(eta_run)}"
        if self.plain:
            self._epoch, now = epoch, time.monotonic()
            if now - self._last_line >= self.plain_every_s:
                self._last_line = now
                self.stream.write(f"epoch {epoch}/{self.epochs} step {step}/{self.steps} "
                                  f"({100 * step / self.steps:.0f}%), {text}, "
                                  f"epoch ETA {_duration((self.steps - step) * step_s)}\n")
                self.stream.flush()
            return
        if self.bar is None or epoch != self._epoch:
            self.close()
            self._epoch = epoch
            self.bar = tqdm(total=self.steps, unit="step", file=self.stream, dynamic_ncols=True, leave=True,
                            desc=f"epoch {epoch}/{self.epochs}")
        self.bar.n = min(step, self.steps)
        self.bar.set_postfix_str(text, refresh=False)
        self.bar.refresh()

    def _seconds_per_step(self, epoch: int, step: int, seconds: float) -> float:
        """From the last two reports of this epoch (the first steps of an epoch include its start-up:
        the dataset pipeline starting, so the epoch's average would overstate the ETA); inf until an
        epoch has two reports."""
        previous, self._previous = self._previous, (epoch, step, seconds)
        if previous is None or previous[0] != epoch or step <= previous[1]:
            return float("inf")
        return (seconds - previous[2]) / (step - previous[1])

    def close(self) -> None:
        """Finish the current epoch's bar (if any) at 100%: the epoch ran all its steps (reports come at
        most every 2 s, so the last one is usually short of the end)."""
        if self.bar is not None:
            self.bar.n = self.bar.total
            self.bar.close()
            self.bar = None
        self._closed = max(self._closed, self._epoch)
