"""Every feature kind reaches the towers: encoders, tables, batches, training on a planted problem, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import feature_data as fd
from twotower.model.batch import batch_columns, feature_column, to_numpy_batch
from twotower.model.checkpoint import load_checkpoint, save_checkpoint
from twotower.model.config import ContextMode, ModelConfig
from twotower.model.features import FeatureEncoder
from twotower.model.schema import Feature
from twotower.model.twotower import TwoTowerModel

SMALL = dict(user_embedding_dim=8, item_embedding_dim=8, feature_embedding_dim=8, final_embedding_dim=16,
             hidden_dims=[32], dropout=0.0, rerank_depth=fd.NUM_ITEMS, temperature=0.1)


@pytest.fixture
def one_thread():
    """Tiny models train several times faster on one thread on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def world(seed: int = 0):
    rng = np.random.default_rng(seed)
    sch = fd.schema(11)
    users = fd.users(rng.integers(0, 4, 11), rng)
    it = fd.items(rng)
    return sch, users, {k: it[k] for k in [f.name for f in sch.item_features] + ["train_count"]}, it


def batch_of(n: int, rng, it, sch) -> dict[str, torch.Tensor]:
    return fd.cold_batch(n, rng, it["group"], sch)


def test_numeric_is_standardised_with_the_features_mean_and_std_and_nan_is_zero():
    enc = FeatureEncoder([Feature("age", "numeric", mean=100.0, std=30.0)], dim=4)
    out = enc({"age": torch.tensor([130.0, 100.0, 55.0, float("nan")])})
    assert enc.out_dim == 1 and out.shape == (4, 1)
    assert out.squeeze(1).tolist() == pytest.approx([1.0, 0.0, -1.5, 0.0])


def test_bucketized_value_lands_in_one_plus_the_boundaries_at_or_below_it():
    f = Feature("price", "bucketized", boundaries=(18.0, 30.0, 50.0))
    enc = FeatureEncoder([f], dim=3)
    x = torch.tensor([-1e9, 17.99, 18.0, 29.99, 30.0, 50.0, 1e9, float("nan")])
    got = enc.bucket(f, x)
    assert got.tolist() == [1, 1, 2, 2, 3, 4, 4, 0]                     # a boundary goes to the bucket above
    np.testing.assert_array_equal(got[:-1].numpy(), np.searchsorted(f.boundaries, x[:-1].numpy(), "right") + 1)
    assert f.cardinality == 5 and enc.out_dim == 3
    out = enc({"price": x})
    assert torch.equal(out[2], enc.embeddings["price"].weight[2]) and torch.equal(out[7], torch.zeros(3))


def test_vector_is_projected_without_bias_and_zeros_contribute_nothing():
    enc = FeatureEncoder([Feature("img", "vector", dim=5), Feature("genre", "categorical", cardinality=3)], dim=4)
    assert enc.out_dim == 8
    v = torch.randn(2, 5)
    out = enc({"img": torch.cat([v, torch.zeros(1, 5)]), "genre": torch.tensor([1, 2, 0])})
    assert torch.allclose(out[:2, :4], v @ enc.embeddings["img"].weight.T) and torch.equal(out[2], torch.zeros(8))
    with pytest.raises(KeyError, match="'genre' \\(categorical\\) is missing"):
        enc({"img": v})


def test_numeric_bucketized_and_vector_values_change_the_towers(one_thread):
    sch, users, items, _ = world()
    model = TwoTowerModel(sch, ModelConfig(**SMALL), users, items).eval()
    rng = np.random.default_rng(3)
    base = batch_of(4, rng, fd.items(rng), sch)

    def query(**over):
        return model.query_embedding(base | {k: torch.full((4,), float(v)) for k, v in over.items()})

    assert torch.allclose(query(u_num=100.0), query(u_num=float("nan")))            # the mean is "missing"
    assert not torch.allclose(query(u_num=100.0), query(u_num=130.0))
    assert torch.equal(query(u_bucket=18.0), query(u_bucket=29.99))                 # same bucket
    assert not torch.allclose(query(u_bucket=18.0), query(u_bucket=17.99))
    before = model.item_embedding(torch.tensor([5]))
    model.item_tower.table_i_img[5] += 1.0
    assert not torch.allclose(before, model.item_embedding(torch.tensor([5])))
    assert model.item_tower.table_i_img.dtype == torch.float32 and model.item_tower.table_i_img.shape == (65, 3)
    assert model.item_tower.table_i_price.dtype == torch.float32 and torch.isnan(model.item_tower.table_i_price[0])


def test_cold_items_start_with_zero_id_rows_and_get_their_vector_from_features():
    sch, users, items, _ = world()
    cold = np.flatnonzero(items["train_count"] == 0)
    assert cold.tolist() == [0, 63, 64]
    model = TwoTowerModel(sch, ModelConfig(**SMALL), users, items).eval()
    weight = model.item_tower.id_embedding.weight
    assert torch.equal(weight[cold], torch.zeros(3, 8)) and (weight[1:63].abs().sum(1) > 0).all()
    for f in sch.item_features:                                   # items 62 (warm) and 64 get item 63's features
        table = getattr(model.item_tower, f"table_{f.name}")
        table[62] = table[64] = table[63]
    emb = model.item_embedding(torch.tensor([63, 64, 62]))
    assert torch.allclose(emb[0], emb[1], atol=1e-6) and not torch.allclose(emb[0], emb[2], atol=1e-3)
    hashed = TwoTowerModel(sch, ModelConfig(**SMALL, item_id_buckets=16), users, items)
    assert (hashed.item_tower.id_embedding.weight[1:].abs().sum(1) > 0).all()        # shared rows: untouched


@pytest.mark.parametrize("mode", list(ContextMode))
def test_every_kind_trains_on_the_planted_problem(mode, one_thread):
    """Cold users (features only, empty history): recall@10 over 62 warm items goes from about chance
    (10 / 62 = 0.16) to >= 0.9 in 150 steps; 0.9 needs the user cluster (u_vec, u_num), the context
    situation (c_tags) and the item group (i_genres, i_price, i_title) together: without any one of them
    at most 10/16 = 0.62 is reachable."""
    sch, _, items, it = world()
    torch.manual_seed(0)
    model = TwoTowerModel(sch, ModelConfig(**SMALL, context_mode=mode), None, items)
    evaluation = batch_of(512, np.random.default_rng(1), it, sch)

    def recall() -> float:
        model.eval()
        with torch.no_grad():
            scores = model.rank_scores(evaluation, model.all_item_embeddings())
        scores[:, 0] = -float("inf")
        model.train()
        return (scores.topk(10, dim=1).indices == evaluation["item_idx"][:, None]).any(1).float().mean().item()

    before = recall()
    fd.train(model, it["group"], steps=150)
    assert before < 0.4 and recall() >= 0.9, (before, recall())


@pytest.mark.parametrize("mode", list(ContextMode))
def test_checkpoint_round_trip_with_every_kind(tmp_path, mode):
    sch, users, items, it = world()
    users["u_num"][2] = np.nan
    model = TwoTowerModel(sch, ModelConfig(**SMALL, context_mode=mode), users, items).eval()
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "ck")).model
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, equal_nan=True, rtol=0, atol=0)
    batch = batch_of(6, np.random.default_rng(2), it, sch) | {"user_idx": torch.arange(6)}
    batch = {k: v for k, v in batch.items() if k not in {f.name for f in sch.user_features}}   # table values
    assert torch.equal(loaded.rank_scores(batch, loaded.all_item_embeddings()),
                       model.rank_scores(batch, model.all_item_embeddings()))


def test_batches_get_the_dtype_of_every_kind_and_the_weight():
    sch = fd.schema(11, weighted=True)
    rng = np.random.default_rng(0)
    ex = fd.examples(np.array([0, 3, 1]), fd.items(rng)["group"], rng)
    ex["c_tags"] = [[1], [], [2, 3, 1]]
    raw = {"user_idx": np.array([1, 2, 3], np.int32), "history": [[4], [], [5, 6]], "weight": np.array([1, 0.5, 2]), **ex}
    out = to_numpy_batch(raw, sch)
    assert batch_columns(sch)[-1] == "weight" and "weight" not in batch_columns(fd.schema(11))
    assert out["c_tags"].tolist() == [[1, 0], [0, 0], [2, 3]] and out["c_tags"].dtype == np.int64
    assert out["c_dist"].dtype == np.float32 and out["c_device"].dtype == np.int64
    assert out["weight"].dtype == np.float32 and out["weight"].tolist() == [1.0, 0.5, 2.0]
    assert to_numpy_batch(out, sch)["c_tags"] is out["c_tags"]                # already converted: kept
    vec = Feature("img", "vector", dim=3)
    assert feature_column(vec, [[1, 2, 3], None]).tolist() == [[1, 2, 3], [0, 0, 0]]
    with pytest.raises(ValueError, match="'img': rows have 2 values, expected dim 3"):
        feature_column(vec, np.zeros((2, 2)))


def test_check_dataset_compares_the_statistics_the_encoders_use():
    import dataclasses

    from twotower.model.checkpoint import IncompatibleDatasetError, check_dataset

    sch = fd.schema(11)
    check_dataset(sch, fd.schema(11), checkpoint="ck", dataset_dir="ds")
    changes = {"u_num": Feature("u_num", "numeric", mean=100.0, std=31.0), "u_vec": Feature("u_vec", "vector", dim=5),
               "u_bucket": Feature("u_bucket", "bucketized", boundaries=(18.0, 30.0, 51.0))}
    for name, changed in changes.items():
        other = dataclasses.replace(sch, user_features=tuple(changed if f.name == name else f for f in sch.user_features))
        with pytest.raises(IncompatibleDatasetError, match=rf"other user_features than ds has \(differ in \['{name}'\]"):
            check_dataset(sch, other, checkpoint="ck", dataset_dir="ds")
