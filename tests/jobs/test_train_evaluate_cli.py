"""``train`` / ``evaluate`` commands: argument handling, exit codes, one small 1-worker CLI run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from twotower.distributed.config import TrainConfig
from twotower.jobs import evaluate as evaluate_job
from twotower.jobs import train as train_job

DEFAULT_YAML = Path(train_job.__file__).parent / "configs" / "default.yaml"


def test_default_yaml_is_the_default_config():
    assert TrainConfig.from_yaml(DEFAULT_YAML) == TrainConfig()


def test_flags_override_overrides_override_the_file(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epochs: 5\nlr: 0.01\nmodel:\n  temperature: 0.2\n")
    p = train_job.argparse.ArgumentParser()
    train_job.configure(p)
    args = p.parse_args(["--dataset", "d", "--config", str(cfg_file), "--epochs", "7", "--set", "model.dropout=0.0",
                         "--out", str(tmp_path / "runs"), "lr=0.02", "temperature=0.3"])
    cfg = train_job.build_config(args)
    assert (cfg.epochs, cfg.lr, cfg.model.temperature, cfg.model.dropout) == (7, 0.02, 0.3, 0.0)
    assert cfg.storage_path == str(tmp_path / "runs")


@pytest.mark.parametrize("argv, message", [
    (["unknown_key=1"], "unknown config key 'unknown_key'"),
    (["lr=-1"], "config key 'lr'"),
    (["--num-workers", "0"], "config key 'num_workers'"),
    (["batch_size=1000000"], "batch_size"),
])
def test_train_config_errors_exit_2_with_one_line(argv, message, synthetic_dataset, capsys):
    assert train_job.main(["--dataset", str(synthetic_dataset), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_train_on_a_missing_dataset_exits_2(tmp_path, capsys):
    assert train_job.main(["--dataset", str(tmp_path / "nope")]) == 2
    assert "schema.json" in capsys.readouterr().err


def test_evaluate_errors_exit_2(tmp_path, synthetic_dataset, capsys):
    assert evaluate_job.main(["--checkpoint", str(tmp_path), "--dataset", str(synthetic_dataset)]) == 2
    assert "checkpoint.json" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_cli_train_then_evaluate(ray_cluster, synthetic_dataset, tmp_path, capsys):
    """One worker (no DDP wrapper), one short epoch, then evaluate the printed checkpoint."""
    rc = train_job.main(["--dataset", str(synthetic_dataset), "--num-workers", "1", "--epochs", "1",
                         "--out", str(tmp_path), "--run-name", "cli", "batch_size=128",
                         "max_steps_per_epoch=20", "hidden_dims=[32]"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "best checkpoint:" in out and "R@10" in out
    ckpt = tmp_path / "cli" / "best_checkpoint"
    assert (ckpt / "checkpoint.json").is_file()
    metrics = tmp_path / "m.json"
    assert evaluate_job.main(["--checkpoint", str(ckpt), "--dataset", str(synthetic_dataset),
                              "--split", "test", "--ks", "5", "10", "--out", str(metrics)]) == 0
    table = capsys.readouterr().out
    assert "popularity" in table and "recall@5" in table
    result = json.loads(metrics.read_text())
    assert result["split"] == "test" and result["num_queries"] == 2000
    assert set(result) >= {"model", "popularity"} and "recall@10" in result["popularity"]
