"""Large ID spaces: sparse ID-table gradients, their optimizers, and double-hashed ID embeddings."""
import numpy as np
import pytest
import torch

from twotower.model.checkpoint import load_checkpoint, save_checkpoint
from twotower.model.config import ModelConfig
from twotower.model.embeddings import (HashedEmbedding, expected_collision_fraction, hash_buckets,
                                       hash_coefficients)
from twotower.model.loss import compute_loss
from twotower.model.optim import RowWiseAdagrad, SparseDenseOptimizer, build_optimizer, sparse_parameters
from twotower.model.twotower import TwoTowerModel


def _rows_touched(batch):
    users = set(batch["user_idx"].tolist()) - {0}
    items = (set(batch["item_idx"].tolist()) | set(batch["history"].flatten().tolist())) - {0}
    return users, items


def test_sparse_id_gradients_cover_only_batch_rows(toy_schema, toy_tables, toy_batch):
    model = TwoTowerModel(toy_schema, ModelConfig(), *toy_tables)
    compute_loss(model, toy_batch).loss.backward()
    users, items = _rows_touched(toy_batch)
    for table, rows in ((model.user_tower.id_embedding, users), (model.item_tower.id_embedding, items)):
        grad = table.weight.grad
        assert grad.is_sparse
        dense = grad.to_dense()
        assert set(dense.abs().sum(1).nonzero().flatten().tolist()) == rows
    assert model.user_tower.item_id_embedding is model.item_tower.id_embedding     # one shared item table
    assert len(sparse_parameters(model)) == 2                                       # each table once
    sparse_ids = {id(p) for p in sparse_parameters(model)}
    assert not any(p.grad.is_sparse for p in model.parameters() if p.grad is not None and id(p) not in sparse_ids)


@pytest.mark.parametrize("name,sparse_name", [("adam", "auto"), ("adamw", "auto"), ("adagrad", "auto"),
                                              ("sgd", "auto"), ("adam", "rowwise_adagrad")])
def test_optimizer_step_changes_only_batch_rows_and_never_decays_tables(toy_schema, toy_tables, toy_batch, name,
                                                                        sparse_name):
    torch.manual_seed(0)
    model = TwoTowerModel(toy_schema, ModelConfig(), *toy_tables)
    opt = build_optimizer(name, model, lr=0.01, weight_decay=0.1, sparse_name=sparse_name)
    assert isinstance(opt, SparseDenseOptimizer)
    for group in opt.param_groups:            # what a resume does: must not reach the sparse tables
        group.update(weight_decay=0.1)
    users_before = model.user_tower.id_embedding.weight.detach().clone()
    items_before = model.item_tower.id_embedding.weight.detach().clone()
    mlp_before = model.item_tower.mlp[0].weight.detach().clone()
    opt.zero_grad()
    compute_loss(model, toy_batch).loss.backward()
    opt.step()
    users, items = _rows_touched(toy_batch)
    changed_u = (model.user_tower.id_embedding.weight != users_before).any(1).nonzero().flatten().tolist()
    changed_i = (model.item_tower.id_embedding.weight != items_before).any(1).nonzero().flatten().tolist()
    assert set(changed_u) == users and set(changed_i) == items
    assert not torch.equal(model.item_tower.mlp[0].weight, mlp_before)           # dense part steps too
    state = opt.state_dict()
    fresh = build_optimizer(name, TwoTowerModel(toy_schema, ModelConfig(), *toy_tables), lr=0.01,
                            sparse_name=sparse_name)
    fresh.load_state_dict(state)
    with pytest.raises(ValueError, match="sparse_id_embeddings"):
        fresh.load_state_dict(state["dense"])


def test_rowwise_adagrad_keeps_one_accumulator_per_row_and_follows_its_formula():
    table = torch.nn.Embedding(6, 3, padding_idx=0, sparse=True)
    before = table.weight.detach().clone()
    opt = RowWiseAdagrad(table.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        (table(torch.tensor([0, 2, 2, 4])) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        opt.step()
    acc = opt.state[table.weight]["sum"]
    assert acc.shape == (6,)
    g = torch.tensor([2.0, 4.0, 6.0])                          # row 2 appears twice per batch
    expected = before[2] - 0.5 * g / (g.pow(2).mean().sqrt() + 1e-8) - 0.5 * g / ((2 * g.pow(2).mean()).sqrt() + 1e-8)
    assert torch.allclose(table.weight[2], expected, atol=1e-6)
    assert torch.equal(table.weight[[0, 1, 3, 5]], before[[0, 1, 3, 5]])
    assert acc[[0, 1, 3, 5]].eq(0).all() and acc[4] > 0
    with pytest.raises(ValueError, match="2-D"):
        RowWiseAdagrad([torch.nn.Parameter(torch.zeros(3))])


def test_dense_config_keeps_one_plain_optimizer(toy_schema, toy_tables):
    model = TwoTowerModel(toy_schema, ModelConfig(sparse_id_embeddings=False), *toy_tables)
    assert sparse_parameters(model) == []
    assert isinstance(build_optimizer("adam", model, lr=0.01), torch.optim.Adam)
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        build_optimizer("lamb", model, lr=0.01)
    with pytest.raises(ValueError, match="unknown sparse optimizer 'ftrl'"):
        build_optimizer("adam", model, lr=0.01, sparse_name="ftrl")


def test_hash_buckets_are_deterministic_distinct_and_keep_padding_at_zero():
    ids = torch.arange(0, 10_000)
    a = hash_buckets(ids, hash_coefficients(), 1001)
    assert torch.equal(a, hash_buckets(ids.clone(), hash_coefficients(), 1001))    # deterministic
    assert a.shape == (10_000, 2) and a.dtype == torch.int64
    assert a[0].tolist() == [0, 0] and int(a[1:].min()) == 1 and int(a.max()) == 1000
    assert (a[1:, 0] == a[1:, 1]).float().mean() < 0.01                              # two different hashes
    assert hash_buckets(torch.tensor([2**40 + 7]), hash_coefficients(), 1001).min() >= 1   # any id fits
    with pytest.raises(ValueError, match="num_buckets must be >= 2"):
        hash_buckets(ids, hash_coefficients(), 1)


@pytest.mark.parametrize("buckets,num_ids", [(101, 3000), (1001, 20_000), (20_001, 20_000)])
def test_collision_rates_match_random_hashing_theory(buckets, num_ids):
    b = hash_buckets(torch.arange(1, num_ids + 1), hash_coefficients(), buckets).numpy()
    single = np.bincount(b[:, 0], minlength=buckets)
    single_rate = (single[b[:, 0]] > 1).mean()
    pairs = np.sort(b, axis=1)
    _, inverse, counts = np.unique(pairs[:, 0] * buckets + pairs[:, 1], return_inverse=True, return_counts=True)
    double_rate = (counts[inverse] > 1).mean()
    assert single_rate == pytest.approx(expected_collision_fraction(num_ids, buckets, hashes=1), rel=0.05)
    assert double_rate == pytest.approx(expected_collision_fraction(num_ids, buckets, hashes=2), rel=0.25,
                                        abs=2e-4)
    assert double_rate < single_rate / 2


def test_hashed_embedding_sums_two_rows_and_embeds_padding_to_zero():
    emb = HashedEmbedding(50, 4, sparse=True)
    ids = torch.tensor([[0, 3, 12345678]])
    out = emb(ids)
    b = emb.buckets(ids)
    assert out.shape == (1, 3, 4)
    assert torch.equal(out[0, 0], torch.zeros(4))
    assert torch.allclose(out[0, 2], emb.weight[b[0, 2, 0]] + emb.weight[b[0, 2, 1]])
    out.sum().backward()
    touched = set(emb.weight.grad.coalesce().indices().flatten().tolist())
    assert touched == set(b[0, 1:].flatten().tolist())                             # padding row: no gradient


def test_hashed_model_trains_and_round_trips_through_a_checkpoint(tmp_path, toy_schema, toy_tables, toy_batch):
    torch.manual_seed(0)
    cfg = ModelConfig(user_id_buckets=7, item_id_buckets=13, final_embedding_dim=16, hidden_dims=[32],
                      dropout=0.0)
    model = TwoTowerModel(toy_schema, cfg, *toy_tables)
    assert model.item_tower.id_embedding.weight.shape == (13, cfg.item_embedding_dim)
    assert model.user_tower.id_embedding.weight.shape == (7, cfg.user_embedding_dim)
    opt = build_optimizer("adam", model, lr=0.01)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        out = compute_loss(model, toy_batch)
        out.loss.backward()
        opt.step()
        losses.append(out.logs["loss"])
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    save_checkpoint(model, tmp_path / "ck")
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.model_config.item_id_buckets == 13 and loaded.model_config.user_id_buckets == 7
    assert "item_tower.id_embedding.hash_coefficients" in loaded.model.state_dict()
    assert torch.equal(loaded.model.rank_scores(toy_batch, loaded.model.all_item_embeddings()),
                       model.rank_scores(toy_batch, model.all_item_embeddings()))
