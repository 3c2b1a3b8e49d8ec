"""A dataset prepared by ``twotower prepare table`` (the e-commerce spec of ``tests/data/shop_tables.py``: every
feature kind, weighted interactions, a cold item) trains in-process with its weights and is served offline:
cold start with a bucketized, a categorical and a numeric user feature, the stored context of every kind."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from shop_tables import write_shop  # noqa: E402

from twotower.data.splits import read_split_examples  # noqa: E402
from twotower.model.batch import feature_column, to_tensors  # noqa: E402
from twotower.model.schema import DatasetSchema  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(600)]
TS = 1_700_000_000
CONTEXT = {"timestamp": TS, "device": "web", "price_seen": 30, "price_band": 30, "tags": ["promo"]}


def tables(out: Path, schema: DatasetSchema) -> tuple[dict, dict]:
    """users.parquet / items.parquet as the model's table columns (``feature_column`` per kind)."""
    def read(name: str, features) -> dict:
        t = pq.read_table(out / name)
        return {f.name: feature_column(f, t[f.name].to_pylist() if f.kind == "vector" else
                                       t[f.name].to_numpy(zero_copy_only=False) if f.kind != "multi_hot"
                                       and f.kind != "hashed_bag" else t[f.name]) for f in features}
    items = read("items.parquet", schema.item_features)
    items["train_count"] = pq.read_table(out / "items.parquet")["train_count"].to_numpy()
    return read("users.parquet", schema.user_features), items


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    from twotower.distributed.sources import prepare_table
    from twotower.model.checkpoint import save_checkpoint
    from twotower.model.config import ModelConfig
    from twotower.model.loss import compute_loss
    from twotower.model.optim import build_optimizer
    from twotower.model.twotower import TwoTowerModel

    root = tmp_path_factory.mktemp("shop")
    prepare_table(write_shop(root), root / "out")
    schema = DatasetSchema.load(root / "out")
    torch.manual_seed(0)
    model = TwoTowerModel(schema, ModelConfig(final_embedding_dim=8, hidden_dims=[16], dropout=0.0, temperature=0.5),
                          *tables(root / "out", schema))
    train = to_tensors(read_split_examples(root / "out", "train", schema), schema)
    assert train["weight"].dtype == torch.float32 and len(train["weight"]) == 4
    opt, losses = build_optimizer("adam", model, lr=0.01), []
    for _ in range(30):
        loss = compute_loss(model, train).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    ckpt = save_checkpoint(model.eval(), root / "ckpt", dataset_dir=str(root / "out"))
    return root / "out", schema, model, ckpt, losses


def test_prepared_kinds_train_with_weights_and_start_cold_items_at_zero(shop):
    out, schema, model, _, losses = shop
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    assert {f.kind for f in schema.user_features + schema.item_features + schema.context_features} == {
        "categorical", "numeric", "bucketized", "multi_hot", "hashed_bag", "vector"}
    fresh = type(model)(schema, model.cfg, *tables(out, schema))
    cold = np.flatnonzero(pq.read_table(out / "items.parquet")["train_count"].to_numpy() == 0)
    assert cold.tolist() == [0, 4, 5] and not fresh.item_tower.id_embedding.weight[cold].any()


def test_prepared_kinds_are_served_offline(shop):
    from twotower.serve import Recommender
    from twotower.serve.schema import RequestError

    _, schema, model, ckpt, _ = shop
    rec = Recommender.load(ckpt)
    user = {"age": 61, "segment": "gold", "ltv": 80.0}
    got = rec.recommend("new", context=CONTEXT, user_features=user, k=5)
    assert got.path == "cold_start" and got.cold_start_strategy == "user_features"
    assert got.context["tags"] == [rec.state.context_vocabs["tags"]["promo"]] and got.context["price_seen"] == 30.0
    q = rec.encoder.encode([_query(rec, user)])[0]
    scores = rec.encoder.item_embeddings[1:].numpy() @ q                    # exact search by hand
    assert [it.item_id for it in got.items] == [rec.state.catalogue.item_ids[i + 1] for i in np.argsort(-scores)[:5]]
    assert [it.score for it in got.items] == pytest.approx(np.sort(scores)[::-1][:5].tolist(), abs=1e-5)
    young = rec.encoder.encode([_query(rec, {**user, "age": 20})])[0]      # another age bucket, another query
    assert not np.allclose(young, q)
    for bad, field in [({"age": "old"}, "user_features.age"), ({"ltv": [1]}, "user_features.ltv")]:
        with pytest.raises(RequestError) as e:
            rec.recommend("new", context=CONTEXT, user_features=bad)
        assert e.value.field == field
    with pytest.raises(RequestError) as e:
        rec.recommend("new", context={**CONTEXT, "tags": ["nope"]})
    assert e.value.field == "context.tags"


def _query(rec, user: dict):
    from twotower.serve.context import resolve_context
    from twotower.serve.query import QueryInput

    ctx = resolve_context(CONTEXT, rec.state.schema, rec.state.context_vocabs)
    return QueryInput(0, np.zeros(rec.state.schema.history_length, np.int64), ctx,
                      rec.state.users.encode_user_features(user))


def test_load_feature_tables_reads_every_kind(shop):
    from twotower.data.tables import load_feature_tables

    out, schema, *_ = shop
    users, items = load_feature_tables(out, schema)
    want_users, want_items = tables(out, schema)
    for got, want in ((users, want_users), (items, want_items)):
        for name, value in want.items():
            np.testing.assert_array_equal(got[name], value)
