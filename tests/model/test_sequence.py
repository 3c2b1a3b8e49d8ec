"""The causal sequence encoder (history_pooling: transformer) and the every-position loss."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from twotower.model.checkpoint import load_checkpoint, save_checkpoint
from twotower.model.config import ModelConfig
from twotower.model.loss import compute_loss, sequence_softmax_loss
from twotower.model.optim import build_optimizer
from twotower.model.sequence import chronological
from twotower.model.twotower import TwoTowerModel

SEQ = dict(history_pooling="transformer", max_sequence_length=6, sequence_layers=2, sequence_heads=2,
           item_embedding_dim=16, user_embedding_dim=8, hidden_dims=[16], final_embedding_dim=8,
           dropout=0.0, sequence_dropout=0.0)


def _model(schema, tables, **cfg) -> TwoTowerModel:
    torch.manual_seed(0)
    return TwoTowerModel(schema, ModelConfig(**{**SEQ, **cfg}), *tables).eval()


def _windows(b=3, length=6, seed=0) -> dict[str, torch.Tensor]:
    """Sequence batch: b windows of items 1..20 of length 6, the last row half full."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, 21, (b, length), generator=g)
    targets = torch.randint(1, 21, (b, length), generator=g)
    items[-1, length // 2:] = 0
    targets[-1, length // 2:] = 0
    return {"user_idx": torch.arange(1, b + 1), "items": items, "targets": targets,
            "positions": torch.arange(1, length + 1).expand(b, -1).clone(), "mask": targets > 0,
            "hour_sin": torch.randn(b, length, generator=g),
            "day_of_week": torch.randint(1, 8, (b, length), generator=g)}


def test_the_query_at_t_ignores_items_after_t(toy_schema, toy_tables):
    model, batch = _model(toy_schema, toy_tables), _windows()
    with torch.no_grad():
        before = model.query_embedding(batch)
        changed = {**batch, "items": batch["items"].clone()}
        changed["items"][:, 3:] = torch.randint(1, 21, changed["items"][:, 3:].shape)
        after = model.query_embedding(changed)
    assert before.shape == (3, 6, 8)
    torch.testing.assert_close(before[:, :3], after[:, :3])
    assert not torch.allclose(before[:2, 3:], after[:2, 3:])


def test_per_event_query_equals_the_sequence_output_at_the_last_history_item(toy_schema, toy_tables):
    model, batch = _model(toy_schema, toy_tables), _windows()
    with torch.no_grad():
        seq = model.query_embedding(batch)                                            # (3, 6, 8)
        t = 4                                                                         # history x_0..x_4
        history = batch["items"][:2, :t + 1].flip(1)                                  # most recent first
        event = {"user_idx": batch["user_idx"][:2], "item_idx": batch["targets"][:2, t],
                 "history": F.pad(history, (0, 1)), "hour_sin": batch["hour_sin"][:2, t],
                 "day_of_week": batch["day_of_week"][:2, t]}
        torch.testing.assert_close(model.query_embedding(event), seq[:2, t])


def test_chronological_keeps_the_most_recent_items_oldest_first():
    items, _, lengths = chronological(torch.tensor([[5, 4, 3, 2, 1], [7, 6, 0, 0, 0]]), 3)
    assert items.tolist() == [[3, 4, 5], [6, 7, 0]] and lengths.tolist() == [3, 2]


def _hand_loss(q, pos, cands, temperature, pos_lq, cand_lq, drop):
    """Per-position softmax written out with loops (the formula of model/loss.py)."""
    total = 0.0
    for p in range(len(q)):
        label = float(q[p] @ pos[p]) / temperature - pos_lq[p]
        logits = [label] + [float(q[p] @ cands[c]) / temperature - cand_lq[c]
                            for c in range(len(cands)) if not drop(p, c)]
        total += -(label - math.log(sum(math.exp(x) for x in logits)))
    return total / len(q)


@pytest.mark.parametrize("logq,masking", [(False, False), (True, False), (True, True)])
def test_sequence_loss_equals_a_hand_computed_per_position_softmax(logq, masking):
    g = torch.Generator().manual_seed(1)
    q, items = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    pos_idx = torch.tensor([5, 7, 5, 9])
    owner = torch.tensor([[1, 0], [1, 1], [1, 2], [2, 0]])                # (user, position)
    extra, extra_idx = torch.randn(2, 3, generator=g), torch.tensor([7, 3])
    cands = torch.cat([items, extra])
    cand_idx, cand_owner = torch.cat([pos_idx, extra_idx]), torch.cat([owner, torch.full((2, 2), -1)])
    lq = torch.log(torch.tensor([0.2, 0.1, 0.2, 0.05, 0.1, 0.3]))
    pos_lq = lq[:4] if logq else torch.zeros(4)
    cand_lq = lq if logq else torch.zeros(6)

    def drop(p, c):
        own = bool((cand_owner[c] == owner[p]).all())                                  # its own label again
        hit = int(cand_idx[c]) == int(pos_idx[p])
        later = int(cand_owner[c, 0]) == int(owner[p, 0]) and int(cand_owner[c, 1]) > int(owner[p, 1])
        return own or (masking and (hit or later))

    got = sequence_softmax_loss(q, items, pos_idx, owner, cands, cand_idx, cand_owner, 0.5,
                                pos_lq if logq else None, cand_lq if logq else None, masking)
    want = _hand_loss(q, items, cands, 0.5, pos_lq.tolist(), cand_lq.tolist(), drop)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_sequence_batches_train_and_lower_the_loss(toy_schema, toy_tables):
    model = _model(toy_schema, toy_tables, num_negatives=4).train()
    batch, opt = _windows(4, seed=3), build_optimizer("adam", model, 1e-2)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(30):
        out = compute_loss(model, batch, generator=g)
        first = first if first is not None else out.logs["loss"]
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.logs["loss"] < 0.5 * first


def test_the_item_tower_input_variant_and_time_gaps_run(toy_schema, toy_tables):
    model = _model(toy_schema, toy_tables, sequence_input="item_tower", time_gap_buckets=8)
    batch = _windows()
    batch["timestamps"] = torch.arange(18).view(3, 6) * 3600
    with torch.no_grad():
        assert model.query_embedding(batch).shape == (3, 6, 8)
    with pytest.raises(ValueError, match="history's timestamps"):
        model.query_embedding({k: v for k, v in batch.items() if k != "timestamps"})


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="sequence_heads 3 must divide item_embedding_dim 16"):
        ModelConfig(**{**SEQ, "sequence_heads": 3})


def test_checkpoint_round_trip_keeps_every_position_query(toy_schema, toy_tables, tmp_path):
    model, batch = _model(toy_schema, toy_tables, context_mode="trilinear", time_gap_buckets=4), _windows()
    batch["timestamps"] = torch.arange(18).view(3, 6) * 60
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt").model.eval()
    assert loaded.cfg.history_pooling == "transformer" and loaded.cfg.time_gap_buckets == 4
    with torch.no_grad():
        torch.testing.assert_close(loaded.query_embedding(batch), model.query_embedding(batch))
        assert np.array_equal(loaded.all_item_embeddings().numpy(), model.all_item_embeddings().numpy())


def test_full_softmax_equals_cross_entropy_over_every_catalogue_item(toy_schema, toy_tables, toy_batch):
    """loss="full_softmax": each sequence position and each per-event row against all N items, by hand."""
    def hand(query, catalogue, targets, temperature):
        total = 0.0
        for q, y in zip(query.tolist(), targets.tolist()):
            logits = [sum(a * b for a, b in zip(q, v)) / temperature for v in catalogue.tolist()]
            top = max(logits)
            total += top + math.log(sum(math.exp(x - top) for x in logits)) - logits[y - 1]
        return total / len(targets)

    model = _model(toy_schema, toy_tables, loss="full_softmax", temperature=0.5)
    catalogue = model.item_embedding(torch.arange(1, toy_schema.num_items))
    batch = _windows()
    out = model(batch)
    got = compute_loss(model, batch).logs["loss"]
    assert got == pytest.approx(hand(out.query, catalogue, batch["targets"][batch["mask"]], 0.5), rel=1e-5)
    pooled = TwoTowerModel(toy_schema, ModelConfig(loss="full_softmax", temperature=0.5, dropout=0.0),
                           *toy_tables).eval()
    catalogue = pooled.item_embedding(torch.arange(1, toy_schema.num_items))
    got = compute_loss(pooled, toy_batch).logs["loss"]
    want = hand(pooled(toy_batch).query, catalogue, toy_batch["item_idx"], 0.5)
    assert got == pytest.approx(want, rel=1e-5)
