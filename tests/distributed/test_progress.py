"""The driver's training progress display: a tqdm bar in a terminal, plain lines in logs and CI."""
from __future__ import annotations

import io

from twotower.distributed.progress import TrainProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def report(epoch: int, step: int, rows: int, seconds: float) -> dict:
    return {"stage": "train", "epoch": epoch, "step": step, "rows": rows, "seconds": seconds}


def test_plain_lines_in_logs_with_rate_and_eta(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    out, lines = io.StringIO(), io.StringIO()             # not a terminal: plain lines
    p = TrainProgress(epochs=3, steps_per_epoch=100, stream=out, lines=lines, plain_every_s=0.0)
    p.update(report(1, 5, 10_240, 8.0), ["resuming after epoch 0"])     # start-up: no rate yet
    p.update(report(1, 25, 51_200, 16.0))
    p.update({"stage": "validate", "epoch": 1})           # not a training report: nothing shown
    p.update(report(2, 50, 102_400, 20.0))                # first report of epoch 2: no rate yet
    shown = out.getvalue().splitlines()
    assert shown[0] == "epoch 1/3 step 5/100 (5%), rows 10,240, 1,280 examples/s, run ETA <= ?, epoch ETA ?"
    # steps 5 -> 25 in 8 s = 0.4 s/step: 75 steps left in epoch 1 (30 s) + 2 epochs of 100 steps (80 s)
    assert shown[1] == ("epoch 1/3 step 25/100 (25%), rows 51,200, 3,200 examples/s, run ETA <= 1:50, "
                        "epoch ETA 0:30")
    assert shown[2].startswith("epoch 2/3 step 50/100 (50%), rows 102,400, 5,120 examples/s, run ETA <= ?")
    assert len(shown) == 3 and lines.getvalue() == "resuming after epoch 0\n" and p.lines_seen == 1


def test_plain_lines_are_throttled(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    out = io.StringIO()
    p = TrainProgress(epochs=1, steps_per_epoch=10, stream=out, lines=io.StringIO(), plain_every_s=3600)
    for step in range(1, 11):
        p.update(report(1, step, step * 8, step * 0.1))
    assert len(out.getvalue().splitlines()) == 1            # one line per plain_every_s


def test_a_terminal_gets_one_bar_per_epoch_and_ci_gets_plain_lines(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    term, lines = Terminal(), io.StringIO()
    p = TrainProgress(epochs=2, steps_per_epoch=40, stream=term, lines=lines)
    p.update(report(1, 5, 2_500, 1.0))
    p.update(report(1, 10, 5_000, 2.0))
    p.update({"stage": "validate", "epoch": 1}, ["epoch 1/2 done: train_loss 6.1"])
    p.update(report(2, 20, 10_000, 4.0))
    p.close()
    screen = term.getvalue()
    assert "\repoch 1/2:  25%" in screen and "\repoch 1/2: 100%" in screen      # redrawn in place, then completed
    assert "\repoch 2/2:  50%" in screen and "20/40" in screen
    assert "rows 5,000, 2,500 examples/s, run ETA <= 0:14" in screen        # 0.2 s/step x (30 + 40) steps
    assert lines.getvalue() == "epoch 1/2 done: train_loss 6.1\n"
    monkeypatch.setenv("CI", "true")
    assert TrainProgress(epochs=1, steps_per_epoch=1, stream=Terminal()).plain


def test_a_bar_is_completed_when_its_epoch_ends_and_stale_reports_are_ignored(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    term, lines = Terminal(), io.StringIO()
    p = TrainProgress(epochs=2, steps_per_epoch=40, stream=term, lines=lines)
    p.update(report(1, 30, 15_000, 6.0))                  # the last report of epoch 1 (reports are throttled)
    p.update(report(1, 30, 15_000, 6.0), ["epoch 1/2 done"])   # summary line: epoch 1 ended
    assert p.bar is None and "40/40" in term.getvalue()    # completed, not left at 30/40
    p.update(report(2, 10, 5_000, 2.0))
    assert p.bar is not None and p.bar.n == 10
