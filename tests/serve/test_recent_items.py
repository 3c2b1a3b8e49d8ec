"""``recent_items``: what the user just did, appended to the stored sequence without retraining.

Expected answers are computed here from the model directly: the extended history is built by hand
(request items newest first, then the stored history from the dataset's sequences), encoded with the
model's own forward functions and ranked over every item embedding (exact), with the user's seen items
and the recent items excluded."""
from __future__ import annotations

import numpy as np
import pytest
import requests
import torch

from twotower.model.batch import pad_lists
from twotower.serve.context import context_batch, resolve_context

from serve_helpers import Offline

pytestmark = [pytest.mark.ray]
TS = 880_000_000
RECENT = ["50", "181", "no-such-item", "1"]


def _stored_history(dataset, schema, user_idx: int) -> list[int]:
    """All of the user's items, most recent first, read from the dataset's test examples (the test item,
    then its history), not from the serving state."""
    from twotower.data.splits import iter_split_examples

    for batch in iter_split_examples(dataset, "test", schema, 10_000, history_length=5_000):
        rows = np.flatnonzero(batch["user_idx"] == user_idx)
        if len(rows):
            return [int(batch["item_idx"][rows[0]])] + [int(i) for i in batch["history"][rows[0]] if i > 0]
    raise AssertionError(f"user {user_idx} has no test example")


def _expected(off: Offline, user_id: str, recent: list[str], k: int, mode: str) -> list[str]:
    model, state = off.encoder.model, off.state
    user_idx = state.users.lookup(user_id)
    known = [state.catalogue.lookup(i) for i in recent if state.catalogue.lookup(i) > 0]
    stored = _stored_history(off.dataset, state.schema, user_idx)
    hist = torch.from_numpy(pad_lists([(known[::-1] + stored)[:model.history_length]], model.history_length))
    ctx = {n: torch.from_numpy(v) for n, v in context_batch(
        [resolve_context({"timestamp": TS}, state.schema, state.context_vocabs)], state.schema).items()}
    users = torch.tensor([user_idx])
    with torch.no_grad():
        if mode == "user_tower":
            q = model.query_embedding({"user_idx": users, "history": hist, **ctx})
        else:
            q = model.query_from_user(model.user_embeddings(users, hist), {"user_idx": users, **ctx})
        scores = (q @ model.all_item_embeddings().T)[0].numpy()
    scores[0] = -np.inf
    scores[np.asarray(stored + known)] = -np.inf
    top = np.lexsort((np.arange(len(scores)), -scores))[:k]
    return [str(state.catalogue.item_ids[i]) for i in top]


@pytest.fixture(scope="module")
def offlines(serve_apps):
    out = {}
    for mode in ("user_tower", "trilinear"):
        art = getattr(serve_apps, mode)
        out[mode] = Offline(art)
        out[mode].dataset = art.dataset
    return out


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["user_tower", "trilinear"])
def test_http_answer_equals_the_offline_encoding_of_the_extended_sequence(serve_apps, offlines, mode):
    base = getattr(serve_apps, f"{mode}_url")
    for user in ("3", "42"):
        body = {"user_id": user, "context": {"timestamp": TS}, "k": 10, "recent_items": RECENT}
        r = requests.post(f"{base}/v1/recommend", json=body, timeout=60)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["path"] == "model" and got["unknown_recent_items"] == ["no-such-item"]
        assert [it["item_id"] for it in got["items"]] == _expected(offlines[mode], user, RECENT, 10, mode)
        assert not {"50", "181", "1"} & {it["item_id"] for it in got["items"]}
        plain = requests.post(f"{base}/v1/recommend", json={**body, "recent_items": []}, timeout=60).json()
        assert plain["items"] != got["items"] and plain["unknown_recent_items"] == []


@pytest.mark.timeout(300)
def test_recent_items_of_an_unknown_user_are_its_history(serve_apps, offlines):
    body = {"user_id": "new-visitor", "context": {"timestamp": TS}, "k": 5, "recent_items": ["50", "181"]}
    got = requests.post(f"{serve_apps.user_tower_url}/v1/recommend", json=body, timeout=60).json()
    assert got["path"] == "cold_start" and got["cold_start_strategy"] == "recent_items"
    alone = requests.post(f"{serve_apps.user_tower_url}/v1/recommend", json={**body, "recent_items": ["no-such"]},
                          timeout=60).json()
    assert alone["cold_start_strategy"] == "popularity" and alone["unknown_recent_items"] == ["no-such"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("bad,field", [([{"id": 1}], "recent_items.0"), (["1", True], "recent_items.1"),
                                       ("50", "recent_items"), ([str(i) for i in range(1, 202)], "recent_items")])
def test_a_bad_recent_items_value_is_a_422_naming_it(serve_apps, bad, field):
    r = requests.post(f"{serve_apps.user_tower_url}/v1/recommend", json={"user_id": "3", "recent_items": bad,
                                                                       "context": {"timestamp": TS}}, timeout=60)
    assert r.status_code == 422, r.text
    assert field in r.json()["fields"] and field in r.json()["message"]


@pytest.mark.timeout(300)
def test_a_sequence_model_serves_its_own_history_length_and_recent_items(ml100k_dataset, tmp_path):
    """In process (the offline Recommender, exact search): a transformer model reads 80 items, and
    recent_items move its answer exactly as the hand-extended sequence says."""
    from types import SimpleNamespace

    from twotower.data.tables import load_feature_tables
    from twotower.model.checkpoint import save_checkpoint
    from twotower.model.config import ModelConfig
    from twotower.model.schema import DatasetSchema
    from twotower.model.twotower import TwoTowerModel
    from twotower.serve import Recommender

    torch.manual_seed(0)
    cfg = ModelConfig(history_pooling="transformer", max_sequence_length=80, item_embedding_dim=32,
                      final_embedding_dim=32, hidden_dims=[32], sequence_layers=1)
    model = TwoTowerModel(DatasetSchema.load(ml100k_dataset), cfg, *load_feature_tables(ml100k_dataset)).eval()
    rec = Recommender.load(save_checkpoint(model, tmp_path / "ckpt", dataset_dir=str(ml100k_dataset)))
    assert rec.state.users.history(rec.state.users.lookup("13")).shape == (80,)
    off = SimpleNamespace(encoder=rec.encoder, state=rec.state, dataset=ml100k_dataset)
    got = rec.recommend("13", {"timestamp": TS}, k=10, recent_items=RECENT)
    assert [it.item_id for it in got.items] == _expected(off, "13", RECENT, 10, "user_tower")
    assert got.unknown_recent_items == ["no-such-item"]
