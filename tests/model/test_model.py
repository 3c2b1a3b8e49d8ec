import numpy as np
import pytest
import torch
from torch import nn

from twotower.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from twotower.model.config import ContextMode, ModelConfig
from twotower.model.schema import FORMAT_VERSION, DatasetSchema, SchemaError
from twotower.model.twotower import ContextDependentError, TwoTowerModel


@pytest.mark.parametrize("mode", list(ContextMode))
@pytest.mark.parametrize("pooling", ["mean", "attention", "none"])
def test_towers_map_to_final_dim_and_are_normalised(toy_schema, toy_tables, toy_batch, mode, pooling):
    model = TwoTowerModel(toy_schema, ModelConfig(context_mode=mode, final_embedding_dim=12,
                                                  history_pooling=pooling), *toy_tables).eval()
    items = model.all_item_embeddings()
    assert items.shape == (21, 12) and items.dtype == torch.float32
    assert torch.allclose(items.norm(dim=1), torch.ones(21), atol=1e-5)
    assert model.query_embedding(toy_batch).shape == (8, 12)
    assert model.rank_scores(toy_batch, items).shape == (8, 21)


def test_user_embeddings_refuse_context_dependent_user_tower(toy_schema, toy_tables, toy_batch):
    model = TwoTowerModel(toy_schema, ModelConfig(context_mode="user_tower"), *toy_tables)
    with pytest.raises(ContextDependentError, match="depends on the request context"):
        model.user_embeddings(toy_batch["user_idx"], toy_batch["history"])


def test_trilinear_query_is_cached_user_rep_times_context(toy_schema, toy_tables, toy_batch):
    model = TwoTowerModel(toy_schema, ModelConfig(context_mode="trilinear"), *toy_tables).eval()
    cached = model.user_embeddings(toy_batch["user_idx"], toy_batch["history"])
    q = cached * model.context_embedding(toy_batch)
    assert torch.allclose(q, model.query_embedding(toy_batch), atol=1e-6)


def test_trilinear_context_changes_the_ranking(toy_schema, toy_tables, toy_batch):
    torch.manual_seed(0)
    model = TwoTowerModel(toy_schema, ModelConfig(context_mode="trilinear"), *toy_tables).eval()
    torch.nn.init.normal_(model.context_projection.weight, std=1.0)
    items = model.all_item_embeddings()
    morning = dict(toy_batch, hour_sin=torch.full((8,), 1.0), day_of_week=torch.full((8,), 1))
    evening = dict(toy_batch, hour_sin=torch.full((8,), -1.0), day_of_week=torch.full((8,), 6))
    top_m = model.rank_scores(morning, items).topk(5).indices
    top_e = model.rank_scores(evening, items).topk(5).indices
    assert not torch.equal(top_m, top_e)


def test_scoring_layer_head_reranks_dot_candidates(toy_schema, toy_tables, toy_batch):
    torch.manual_seed(0)
    model = TwoTowerModel(toy_schema, ModelConfig(context_mode="scoring_layer", rerank_depth=5),
                          *toy_tables).eval()
    items = model.all_item_embeddings()
    scores = model.rank_scores(toy_batch, items)
    dot_top = model.query_embedding(toy_batch) @ items.T
    candidates = dot_top.topk(5).indices
    assert torch.equal(scores.topk(5).indices.sort().values, candidates.sort().values)
    head = model.head_scores(model.user_representation(toy_batch), items[candidates], toy_batch)
    assert torch.equal(scores.gather(1, candidates).argsort(dim=1), head.argsort(dim=1))


def test_cold_start_features_change_the_user_representation(toy_schema, toy_tables, toy_batch):
    model = TwoTowerModel(toy_schema, ModelConfig(), *toy_tables).eval()
    cold = dict(toy_batch, user_idx=torch.zeros(8, dtype=torch.long))
    a = model.query_embedding(dict(cold, gender=torch.full((8,), 1)))
    b = model.query_embedding(dict(cold, gender=torch.full((8,), 2)))
    assert not torch.allclose(a, b)


def test_checkpoint_round_trip_gives_identical_scores(tmp_path, toy_schema, toy_tables, toy_batch):
    model = TwoTowerModel(toy_schema, ModelConfig(context_mode="trilinear"), *toy_tables).eval()
    save_checkpoint(model, tmp_path / "ck", train_config={"lr": 0.1}, epoch=3, metrics={"recall@10": 0.5})
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.meta["epoch"] == 3 and loaded.train_config == {"lr": 0.1}
    assert loaded.model_config.context_mode == ContextMode.TRILINEAR
    assert torch.equal(loaded.model.rank_scores(toy_batch, loaded.model.all_item_embeddings()),
                       model.rank_scores(toy_batch, model.all_item_embeddings()))


def test_corrupted_or_foreign_checkpoint_raises(tmp_path, toy_schema, toy_tables):
    model = TwoTowerModel(toy_schema, ModelConfig(), *toy_tables)
    path = save_checkpoint(model, tmp_path / "ck")
    with open(path / "model.pt", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "nowhere")
    meta = (path / "checkpoint.json").read_text().replace('"format_version": 1', '"format_version": 99', 1)
    (path / "checkpoint.json").write_text(meta)
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(path)


def test_schema_round_trip_and_unknown_version(tmp_path, toy_schema):
    toy_schema.save(tmp_path / "schema.json")
    assert DatasetSchema.load(tmp_path) == toy_schema
    assert toy_schema.context_feature("hour_sin").kind == "numeric"
    with pytest.raises(KeyError, match="unknown context field 'mood'"):
        toy_schema.context_feature("mood")
    (tmp_path / "schema.json").write_text(toy_schema.to_json().replace(f'"format_version": {FORMAT_VERSION}', '"format_version": 7'))
    with pytest.raises(SchemaError, match="format_version 7"):
        DatasetSchema.load(tmp_path)


def test_feature_table_shape_mismatch_is_reported(toy_schema, toy_tables):
    users, items = toy_tables
    with pytest.raises(ValueError, match="feature table 'year'"):
        TwoTowerModel(toy_schema, ModelConfig(), users, dict(items, year=np.zeros(5, dtype=np.int64)))


def test_history_pooling_ignores_padding_and_attention_can_favour_recency():
    from twotower.model.features import HistoryPooling

    table = nn.Embedding(10, 2, padding_idx=0)
    with torch.no_grad():
        table.weight[4] = torch.tensor([1.0, 0.0])
        table.weight[9] = torch.tensor([0.0, 1.0])
    history = torch.tensor([[4, 9, 0]])                                # third position is padding
    mean = HistoryPooling(2, "mean")(table, history)
    assert torch.allclose(mean, torch.tensor([[0.5, 0.5]]))
    att = HistoryPooling(2, "attention", max_length=3)
    with torch.no_grad():
        att.key.weight.copy_(torch.eye(2))
        att.query.copy_(torch.tensor([50.0, 0.0]))
        att.position.weight.copy_(torch.tensor([[10.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    pooled = att(table, history)                                       # position 0 (most recent) wins
    assert torch.allclose(pooled, torch.tensor([[1.0, 0.0]]), atol=1e-4)
    empty = att(table, torch.zeros(1, 3, dtype=torch.long))
    assert torch.equal(empty, torch.zeros(1, 2))


@pytest.mark.parametrize("hashed", [False, True])
def test_mean_pooling_by_embedding_bag_equals_the_masked_mean_of_the_gathered_rows(hashed):
    from twotower.model.embeddings import HashedEmbedding
    from twotower.model.features import HistoryPooling

    torch.manual_seed(0)
    table = HashedEmbedding(50, 8, sparse=True) if hashed else nn.Embedding(40, 8, padding_idx=0, sparse=True)
    history = torch.randint(1, 40, (6, 5))
    history[:, 3:] = 0
    history[2] = 0                                                     # an empty history pools to zeros
    weights = torch.randn(6, 8)
    (HistoryPooling(8, "mean")(table, history) * weights).sum().backward()
    pooled_grad, table.weight.grad = table.weight.grad.to_dense(), None
    mask = (history > 0).unsqueeze(-1)
    reference = (table(history) * mask).sum(1) / mask.sum(1).clamp(min=1)
    (reference * weights).sum().backward()
    assert torch.allclose(HistoryPooling(8, "mean")(table, history), reference, atol=1e-6)
    assert torch.equal(HistoryPooling(8, "mean")(table, history)[2], torch.zeros(8))
    assert torch.allclose(pooled_grad, table.weight.grad.to_dense(), atol=1e-6)
