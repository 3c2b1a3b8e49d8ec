"""The specs the documentation shows are valid: the README's e-commerce spec and every docs/specs/*.yaml."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from twotower.data.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]


def test_readme_spec_parses_with_every_feature_kind():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Train on your own data"):]
    spec = parse_spec(yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1)), "README")
    kinds = {f.kind for t in (spec.users, spec.items) for f in t.features.values()}
    assert kinds == {"categorical", "numeric", "bucketized", "multi_hot", "text", "vector"}
    assert spec.interactions.weight == "quantity" and spec.split.method == "temporal"


@pytest.mark.parametrize("path", sorted((ROOT / "docs" / "specs").glob("*.yaml")), ids=lambda p: p.name)
def test_docs_specs_parse(path):
    assert parse_spec(yaml.safe_load(path.read_text()), str(path)).name == path.stem
