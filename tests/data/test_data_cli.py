"""``python -m twotower.jobs.prepare`` and mounting it as ``twotower prepare``."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from twotower.jobs.prepare import add_subparser, main

DATA = Path(os.environ.get("TWOTOWER_DATA_DIR",
                           Path(__file__).resolve().parents[2].parent / "shared" / "data"))


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_movielens_command_and_errors(tmp_path, capsys, ray_cluster):
    if not (DATA / "ml-100k").is_dir():
        pytest.fail("ml-100k not available" + " (set TWOTOWER_DATA_DIR or place MovieLens under ../shared/data)")
    out = tmp_path / "ml"
    assert main(["movielens", "--variant", "ml-100k", "--data-dir", str(DATA), "--out", str(out),
                 "--history-length", "10", "--min-rating", "3"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["min_rating"] == 3 and stats["settings"]["history_length"] == 10
    assert stats["settings"]["interactions"]["filter"] == "rating >= 3"
    assert "train" in capsys.readouterr().err
    assert main(["movielens", "--variant", "ml-100k", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "u.data").write_text("1\t2\t3\t4\nx\t2\t3\t4\n")
    assert main(["movielens", "--variant", "ml-100k", "--src", str(bad), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "u.data line 2: user id 'x' is not an integer" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_mounted_synthetic_command(tmp_path, ray_cluster):
    parser = argparse.ArgumentParser(prog="twotower")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["prepare", "synthetic", "--users", "200", "--items", "100",
                              "--interactions", "3000", "--seed", "1", "--out",
                              str(tmp_path / "s"), "--history-length", "8", "-q"])
    assert args.func(args) == 0
    stats = json.loads((tmp_path / "s" / "stats.json").read_text())
    assert sum(stats["rows"].values()) == 3000


@pytest.mark.timeout(300)
def test_module_entry_point(tmp_path):
    """A fresh process starts (and stops) its own local Ray runtime for the job."""
    proc = subprocess.run([sys.executable, "-m", "twotower.jobs.prepare", "synthetic", "--users",
                           "50", "--items", "40", "--interactions", "500", "--out",
                           str(tmp_path / "s")], capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr
    assert "synthetic: 500 / 500 interactions generated" in proc.stderr
    assert "wrote" in proc.stderr and "train 400 / valid 50 / test 50 interactions" in proc.stderr


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_table_command_with_a_spec_and_a_bad_spec(tmp_path, capsys, ray_cluster):
    events = tmp_path / "events.csv"
    events.write_text("who,what,when\n" + "".join(f"u{u},i{(u * 7 + k) % 5},{1000 + k}\n"
                                                  for u in range(4) for k in range(4)))
    (tmp_path / "spec.yaml").write_text("interactions:\n  path: events.csv\n  user_id: who\n  item_id: what\n"
                                        "  timestamp: when\nhistory_length: 3\n")
    assert main(["table", "--spec", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "ds")]) == 0
    stats = json.loads((tmp_path / "ds" / "stats.json").read_text())
    assert stats["rows"] == {"train": 8, "valid": 4, "test": 4} and (stats["users"], stats["items"]) == (4, 5)
    capsys.readouterr()
    (tmp_path / "bad.yaml").write_text("interactions:\n  path: events.csv\n  user_id: who\n  item_id: what\n"
                                       "  timestamp: when\n  dedupliate: true\n")
    assert main(["table", "--spec", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "ds2")]) == 2
    err = capsys.readouterr().err
    assert "interactions.dedupliate: unknown key (did you mean 'deduplicate'?)" in err
    assert not (tmp_path / "ds2").exists()
