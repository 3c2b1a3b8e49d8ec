"""Serving a sequence model with time-gap buckets: the user state keeps the history's timestamps, and a
request's ``recent_items`` count as happening at its ``context.timestamp``.

Expected query vectors are computed from the model's own forward functions on histories and timestamps
read from the dataset's test examples (the test item is each user's newest event), not from the serving
state. The model is freshly initialised (encoding equivalence needs no training); its time-gap
embeddings are N(0, 1), so wrong or missing timestamps change the vectors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.data.splits import iter_split_examples
from twotower.data.tables import load_feature_tables
from twotower.model.batch import pad_lists
from twotower.model.checkpoint import read_checkpoint, save_checkpoint
from twotower.model.config import ModelConfig
from twotower.model.schema import DatasetSchema
from twotower.model.twotower import TwoTowerModel
from twotower.serve.context import context_batch
from twotower.serve.loading import load_encoder, load_serving_state
from twotower.serve.recommender import plan_recommend
from twotower.serve.schema import RecommendRequest

TS = 1_700_000_000
N = 12


@pytest.fixture(scope="module", params=["user_tower", "trilinear"])
def served(request, synthetic_dataset, tmp_path_factory):
    schema = DatasetSchema.load(synthetic_dataset)
    torch.manual_seed(0)
    cfg = ModelConfig(history_pooling="transformer", max_sequence_length=N, sequence_layers=1, time_gap_buckets=16,
                      user_embedding_dim=16, item_embedding_dim=16, final_embedding_dim=16, hidden_dims=[32],
                      context_mode=request.param)
    model = TwoTowerModel(schema, cfg, *load_feature_tables(synthetic_dataset)).eval()
    ckpt = save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / request.param, dataset_dir=str(synthetic_dataset))
    info = read_checkpoint(ckpt)
    return model, load_serving_state(info, synthetic_dataset), load_encoder(info, synthetic_dataset)


def _stored(dataset, schema, user_idx: int) -> tuple[list[int], list[int]]:
    """(items, timestamps) of all of the user's events, newest first, from the test examples."""
    for b in iter_split_examples(dataset, "test", schema, 10_000, history_length=5_000, history_time=True):
        r = np.flatnonzero(b["user_idx"] == user_idx)
        if len(r):
            r, keep = r[0], b["history"][r[0]] > 0
            return ([int(b["item_idx"][r])] + b["history"][r][keep].tolist(),
                    [int(b["timestamp"][r])] + b["history_timestamp"][r][keep].tolist())
    raise AssertionError(f"user {user_idx} has no test example")


def _expected(model, state, dataset, user_idx: int, recent: list[int], ts: int, times_too: bool = True) -> np.ndarray:
    items, times = _stored(dataset, state.schema, user_idx)
    items, times = (recent[::-1] + items)[:N], ([ts] * len(recent) + times)[:N]
    hist = torch.from_numpy(pad_lists([items], N))
    hist_t = torch.from_numpy(pad_lists([times], N)) if times_too else torch.zeros_like(hist)
    ctx = {k: torch.from_numpy(v) for k, v in context_batch([plan_context(state, ts)], state.schema).items()}
    users = torch.tensor([user_idx])
    with torch.no_grad():
        if model.cfg.context_mode.value == "user_tower":
            q = model.query_embedding({"user_idx": users, "history": hist, "history_timestamp": hist_t, **ctx})
        else:
            q = model.query_from_user(model.user_embeddings(users, hist, hist_t), {"user_idx": users, **ctx})
    return q[0].numpy()


def plan_context(state, ts: int):
    return plan_recommend(RecommendRequest.model_validate({"user_id": "1", "context": {"timestamp": ts}}),
                          state).context


@pytest.mark.parametrize("recent", [[], ["3", "17"]])
def test_served_query_uses_the_history_timestamps_and_the_request_time(served, synthetic_dataset, recent):
    model, state, encoder = served
    for user in ("1", "7", "42"):
        body = {"user_id": user, "context": {"timestamp": TS}, "k": 5, "recent_items": recent}
        plan = plan_recommend(RecommendRequest.model_validate(body), state)
        got = encoder.encode([plan.query])[0]
        u, rec = state.users.lookup(user), [state.catalogue.lookup(i) for i in recent]
        want = _expected(model, state, synthetic_dataset, u, rec, TS)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        blind = _expected(model, state, synthetic_dataset, u, rec, TS, times_too=False)
        assert np.abs(got - blind).max() > 1e-4                  # the timestamps change the query (10x the tolerance)
        if recent:                                               # recent items happened at the request's time
            later = _expected(model, state, synthetic_dataset, u, rec, TS + 30 * 86_400)
            moved = plan_recommend(RecommendRequest.model_validate(
                {**body, "context": {"timestamp": TS + 30 * 86_400}}), state)
            np.testing.assert_allclose(encoder.encode([moved.query])[0], later, rtol=1e-5, atol=1e-5)
