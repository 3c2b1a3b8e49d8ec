"""cluster.yaml passes the checks `ray up` runs before contacting the cloud, and pins what pyproject allows.

``ray up`` (``ray.autoscaler._private.commands._bootstrap_config``) runs ``prepare_config`` (merge with the
provider's defaults.yaml, merge setup commands, fill per-type max_workers) and then ``validate_config``
(ray-schema.json plus cross-field checks); only after that does it call the AWS API. Both run offline here.
"""
from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"


def load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_up_checks(config: dict) -> dict:
    """What ``ray up`` does with the file before any cloud call; returns the prepared config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def pinned_requirements(commands: list[str]) -> dict[str, Requirement]:
    """``name==version`` arguments of the ``pip install`` commands, by normalised project name."""
    pins = {}
    for cmd in commands:
        for token in shlex.split(cmd):
            if "==" in token and not token.startswith("-"):
                req = Requirement(token.rstrip(";"))
                pins[req.name.lower().replace("_", "-")] = req
    return pins


def pyproject_dependencies() -> dict[str, Requirement]:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name.lower().replace("_", "-"): Requirement(d) for d in deps}


def test_cluster_yaml_passes_ray_up_validation():
    prepared = ray_up_checks(load())
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head" and set(types) == {"head", "cpu_worker", "gpu_worker"}
    assert types["gpu_worker"]["resources"]["GPU"] >= 1 and "GPU" not in types["cpu_worker"]["resources"]
    for name in ("cpu_worker", "gpu_worker"):
        assert 0 <= types[name]["min_workers"] <= types[name]["max_workers"] <= prepared["max_workers"]
    assert types["gpu_worker"]["min_workers"] == 0, "GPU nodes should scale from zero"
    # the checkout is synced to every node and installed from there
    assert prepared["file_mounts"]["~/twotower"] == "."
    assert any("pip install" in c and "-e ~/twotower" in c for c in prepared["worker_setup_commands"])
    # the dashboard/job server stays on the head's loopback (reached through `ray dashboard cluster.yaml`)
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start


def _drop_resources(c):
    del c["available_node_types"]["cpu_worker"]["resources"]


def _string_max_workers(c):
    c["max_workers"] = "ten"


def _unknown_top_level_key(c):
    c["setup_comands"] = ["echo typo"]


def _unknown_head_type(c):
    c["head_node_type"] = "missing"


def _min_workers_over_max(c):
    c["available_node_types"]["cpu_worker"]["min_workers"] = c["max_workers"] + 1


def _fractional_gpu_resource(c):
    c["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5


@pytest.mark.parametrize("breaker, error, match", [
    (_drop_resources, jsonschema.ValidationError, "resources"),
    (_string_max_workers, jsonschema.ValidationError, "ten"),
    (_unknown_top_level_key, jsonschema.ValidationError, "setup_comands"),
    (_unknown_head_type, ValueError, "head_node_type"),
    (_min_workers_over_max, ValueError, "max_workers"),
    (_fractional_gpu_resource, jsonschema.ValidationError, "0.5"),
])
def test_broken_copies_are_rejected(breaker, error, match):
    config = load()
    breaker(config)
    with pytest.raises(error, match=match):
        ray_up_checks(config)


def test_setup_pins_satisfy_pyproject_and_match_this_ray():
    prepared = ray_up_checks(load())
    pins = pinned_requirements(prepared["worker_setup_commands"])
    assert pins == pinned_requirements(prepared["head_setup_commands"])
    deps = pyproject_dependencies()
    missing = sorted(set(deps) - set(pins))
    assert not missing, f"pyproject dependencies without a pin in cluster.yaml setup_commands: {missing}"
    for name, dep in deps.items():
        (pin,) = pins[name].specifier
        assert pin.operator == "==", f"{name}: {pin} is not an exact pin"
        assert dep.specifier.contains(pin.version, prereleases=True), \
            f"cluster.yaml pins {name}=={pin.version}, pyproject.toml requires {dep.specifier}"
        assert set(dep.extras) <= set(pins[name].extras), f"{name}: pyproject extras {dep.extras} not installed"
    # torch: the same version the README installs first (CPU build there, CUDA/CPU build here)
    readme_torch = set(re.findall(r"torch==([\w.]+)", (ROOT / "README.md").read_text()))
    assert readme_torch == {str(next(iter(pins["torch"].specifier)).version)}
    # Ray on the nodes (image tag and pip pin) is the Ray of the client that runs `ray up` / `ray job submit`
    config = load()
    images = [config["docker"]["image"]] + [t["docker"]["worker_image"] for t in
                                            config["available_node_types"].values() if "docker" in t]
    assert {re.search(r":([\d.]+)-", image).group(1) for image in images} == {ray.__version__}
    assert next(iter(pins["ray"].specifier)).version == ray.__version__
