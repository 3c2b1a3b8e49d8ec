"""Public data through specs (docs/specs/): RecBole's ML-100K files equal the GroupLens ML-100K files
prepared by the MovieLens source, event for event; MovieLens latest-small from a spec written from its README."""
from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from twotower.data.sequences import cut_examples
from twotower.data.vocab import read_vocab
from twotower.distributed.sources import prepare_table
from twotower.model.schema import DatasetSchema

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("TWOTOWER_DATA_DIR", ROOT.parent / "shared" / "data"))
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(300)]


def raw_events(dataset: Path) -> set[tuple]:
    """Every interaction as (raw user, raw item, timestamp, split code, raw items of its history)."""
    schema = DatasetSchema.load(dataset)
    rows = pq.read_table(dataset / "sequences")
    users = {v: k for k, v in read_vocab(dataset, "users").items()}
    items = {v: k for k, v in read_vocab(dataset, "items").items()} | {0: ""}
    out = set()
    for code in (0, 1, 2):
        ex = cut_examples(rows, code, schema)
        for u, i, t, h in zip(ex["user_idx"].tolist(), ex["item_idx"].tolist(), ex["timestamp"].tolist(),
                              ex["history"].tolist()):
            out.add((users[u], items[i], t, code, tuple(items[x] for x in h)))
    return out


def test_recbole_files_equal_grouplens_files_event_for_event(ml100k_dataset, tmp_path):
    src = DATA / "ml-100k-recbole"
    for name in ("ml-100k.inter", "ml-100k.user", "ml-100k.item"):
        shutil.copy(src / name, tmp_path / name)
    shutil.copy(ROOT / "docs" / "specs" / "ml-100k-recbole.yaml", tmp_path / "spec.yaml")
    stats = prepare_table(tmp_path / "spec.yaml", tmp_path / "out")
    assert stats["rows"] == {"train": 98114, "valid": 943, "test": 943}
    recbole, grouplens = raw_events(tmp_path / "out"), raw_events(ml100k_dataset)
    assert len(recbole) == 100_000 and recbole == grouplens
    schema = DatasetSchema.load(tmp_path / "out")
    assert [f.kind for f in schema.user_features] == ["categorical", "categorical", "bucketized", "categorical"]


def test_ml_latest_small_from_a_spec_written_from_its_readme(tmp_path):
    with zipfile.ZipFile(DATA / "ml-latest-small" / "ml-latest-small.zip") as z:
        z.extractall(tmp_path)
    folder = tmp_path / "ml-latest-small"
    shutil.copy(ROOT / "docs" / "specs" / "ml-latest-small.yaml", folder / "spec.yaml")
    stats = prepare_table(folder / "spec.yaml", tmp_path / "out")
    assert sum(stats["rows"].values()) == 100_836 and stats["rows"]["test"] == 610
    assert (stats["users"], stats["items"]) == (610, 9742)
    schema = DatasetSchema.load(tmp_path / "out")
    feats = {f.name: f for f in schema.item_features}
    assert feats["genres"].cardinality == 21                      # 19 README genres + IMAX + "(no genres listed)"
    tags = read_vocab(tmp_path / "out", "tags")
    assert "funny" in tags and feats["tags"].cardinality == len(tags) + 1
    items = pq.read_table(tmp_path / "out" / "items.parquet", columns=["item_id", "title", "tags"]).to_pylist()
    toy = next(r for r in items if r["item_id"] == "1")
    by_index = {v: k for k, v in tags.items()}
    assert toy["title"] == "Toy Story (1995)" and {by_index[t] for t in toy["tags"]} == {"fun", "pixar"}
