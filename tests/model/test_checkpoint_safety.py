"""Loading a checkpoint never runs code from it: a model.pt / optimizer.pt carrying a pickle payload (an
object whose ``__reduce__`` would write a file) is refused with CheckpointError, and the payload never ran,
even when checkpoint.json's sha256 was updated to match (the attacker controls the whole directory)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from twotower.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, sha256_file
from twotower.model.config import ModelConfig
from twotower.model.twotower import TwoTowerModel


class Payload:
    """Unpickling this calls ``os.mkdir(marker)``: the proof that the payload ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("target", ["model.pt", "optimizer.pt"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, toy_schema, toy_tables, target):
    model = TwoTowerModel(toy_schema, ModelConfig(), *toy_tables)
    path = save_checkpoint(model, tmp_path / "ck", optimizer_state={"step": torch.tensor(3)})
    marker = tmp_path / "payload-ran"
    state = torch.load(path / target, weights_only=True)
    state["__evil__"] = Payload(str(marker))
    torch.save(state, path / target)                                   # a well-formed torch file
    meta = json.loads((path / "checkpoint.json").read_text())
    meta["sha256"][target] = sha256_file(path / target)               # checksum updated: passes verify
    (path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=rf"{target}: refused to load, it is not a plain tensor file") as e:
        load_checkpoint(path)
    assert "mkdir" in str(e.value)                                     # names what it refused to call
    assert not marker.exists()
    torch.load(path / target, weights_only=False)                      # control: the payload is real
    assert marker.is_dir()


def test_garbage_torch_file_is_a_checkpoint_error(tmp_path, toy_schema, toy_tables):
    path = save_checkpoint(TwoTowerModel(toy_schema, ModelConfig(), *toy_tables), tmp_path / "ck")
    (path / "model.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="model.pt: (not a readable torch file|refused to load)"):
        load_checkpoint(path, verify=False)
