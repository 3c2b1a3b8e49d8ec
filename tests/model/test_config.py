import pytest

from twotower.distributed.config import ConfigError, TrainConfig
from twotower.model.config import ContextMode


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("epochs: 3\nmodel:\n  temperature: 0.2\n")
    cfg = TrainConfig.from_yaml(p, ["lr=0.01", "hidden_dims=[32, 16]", "model.context_mode=trilinear"])
    assert cfg.epochs == 3 and cfg.lr == 0.01
    assert cfg.model.temperature == 0.2 and cfg.model.hidden_dims == [32, 16]
    assert cfg.model.context_mode == ContextMode.TRILINEAR
    assert TrainConfig.from_yaml(None, []).model.context_mode == ContextMode.USER_TOWER


@pytest.mark.parametrize("override, message", [
    ("nope=1", "unknown config key 'nope'"),
    ("epochs=0", "config key 'epochs'"),
    ("context_mode=sideways", "config key 'model.context_mode'"),
    ("lr", "not of the form key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_yaml(None, [override])
