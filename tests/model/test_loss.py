import math

import torch

from twotower.model.config import ModelConfig
from twotower.model.loss import bce_loss, compute_loss, head_softmax_loss, log_q, sampled_softmax_loss
from twotower.model.optim import build_optimizer
from twotower.model.twotower import TwoTowerModel

# 3x3 example: items 5, 7, 5 (rows 0 and 2 share an item: an accidental hit for each other).
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
V = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
IDX = torch.tensor([5, 7, 5])
LABELS = torch.arange(3)
TAU = 0.5
E2 = math.exp(2.0)


def _loss(log_q_values=None, mask=False):
    return sampled_softmax_loss(Q, V, IDX, LABELS, TAU, log_q_values, mask).item()


def test_plain_in_batch_softmax_matches_hand_computation():
    # logits / tau: row0 [2,0,2], row1 [0,2,0], row2 [2,2,2]
    expected = ((math.log(2 * E2 + 1) - 2) + (math.log(E2 + 2) - 2) + math.log(3)) / 3
    assert abs(_loss() - expected) < 1e-6


def test_accidental_hit_masking_removes_the_duplicate_positive():
    # row0 loses column 2 and row2 loses column 0 (same item 5 as their own positive)
    expected = ((math.log(E2 + 1) - 2) + (math.log(E2 + 2) - 2) + math.log(2)) / 3
    assert abs(_loss(mask=True) - expected) < 1e-6


def test_logq_correction_subtracts_log_expected_count():
    prob = torch.zeros(10)
    prob[5], prob[7] = 0.5, 0.25
    lq = log_q(prob, IDX, batch_positives=3, num_extra=0, num_items=10)     # log(3 * p_j)
    assert torch.allclose(lq, torch.log(torch.tensor([1.5, 0.75, 1.5])))
    a, b = math.log(1.5), math.log(0.75)
    rows = [[2 - a, 0 - b, 2 - a], [0 - a, 2 - b, 0 - a], [2 - a, 2 - b, 2 - a]]
    expected = sum(math.log(sum(math.exp(x) for x in r)) - r[i] for i, r in enumerate(rows)) / 3
    assert abs(_loss(lq) - expected) < 1e-6
    # with masking as well
    rows_m = [[2 - a, 0 - b], [0 - a, 2 - b, 0 - a], [2 - b, 2 - a]]
    pos = [2 - a, 2 - b, 2 - a]
    expected_m = sum(math.log(sum(math.exp(x) for x in r)) - pos[i] for i, r in enumerate(rows_m)) / 3
    assert abs(_loss(lq, mask=True) - expected_m) < 1e-6


def test_logq_with_mixed_negatives_adds_uniform_share():
    prob = torch.tensor([0.0, 0.6, 0.4])
    lq = log_q(prob, torch.tensor([1, 2]), batch_positives=4, num_extra=2, num_items=3)
    assert torch.allclose(lq, torch.log(torch.tensor([4 * 0.6 + 1.0, 4 * 0.4 + 1.0])))


def test_bce_ignores_a_negative_equal_to_the_positive():
    q = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[1.0, 0.0]])
    negs = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])        # second negative is the positive item again
    loss = bce_loss(q, items, negs, torch.tensor([3]), torch.tensor([[4, 3]]), temperature=1.0).item()
    softplus = lambda x: math.log1p(math.exp(x))
    expected = (softplus(-1.0) + softplus(0.0)) / 2        # pos logit 1, valid neg logit 0
    assert abs(loss - expected) < 1e-6


def test_compute_loss_gathered_negatives_equal_a_concatenated_batch(toy_schema, toy_tables, toy_batch):
    """Two workers gathering item embeddings see the same loss as one softmax over both halves' items."""
    torch.manual_seed(0)
    model = TwoTowerModel(toy_schema, ModelConfig(dropout=0.0), *toy_tables).eval()
    half = {k: v[:4] for k, v in toy_batch.items()}
    other = {k: v[4:] for k, v in toy_batch.items()}
    other_items = model(other).items.detach()
    other_idx = other["item_idx"]

    def gather(t):
        return torch.cat([t, other_items if t.dtype.is_floating_point else other_idx])

    got = compute_loss(model, half, gather=gather, rank=0).loss.item()
    out = model(half)
    cand = torch.cat([out.items, other_items])
    cand_idx = torch.cat([half["item_idx"], other_idx])
    lq = torch.log((8 * model.item_prob[cand_idx]).clamp(min=1e-12))
    want = sampled_softmax_loss(out.query, cand, cand_idx, torch.arange(4), model.cfg.temperature, lq, True).item()
    assert abs(got - want) < 1e-5


def test_training_steps_reduce_the_loss(toy_schema, toy_tables, toy_batch):
    torch.manual_seed(0)
    model = TwoTowerModel(toy_schema, ModelConfig(dropout=0.0, num_negatives=4), *toy_tables)
    opt = build_optimizer("adam", model, lr=1e-2)
    first = None
    for _ in range(30):
        loss = compute_loss(model, toy_batch, generator=torch.Generator().manual_seed(1)).loss
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


# per-row losses of the 3x3 example (no logQ, no masking): see test_plain_in_batch_softmax_matches_hand_computation
ROW_LOSSES = [math.log(2 * E2 + 1) - 2, math.log(E2 + 2) - 2, math.log(3)]


def test_sample_weights_give_the_weighted_mean_of_per_query_softmax_losses():
    w = torch.tensor([1.0, 2.0, 0.0])
    got = sampled_softmax_loss(Q, V, IDX, LABELS, TAU, None, False, weight=w).item()
    assert abs(got - (ROW_LOSSES[0] + 2 * ROW_LOSSES[1]) / 3) < 1e-6
    ones = sampled_softmax_loss(Q, V, IDX, LABELS, TAU, None, False, weight=torch.ones(3)).item()
    assert abs(ones - _loss()) < 1e-6 and abs(ones - sum(ROW_LOSSES) / 3) < 1e-6
    zero = sampled_softmax_loss(Q, V, IDX, LABELS, TAU, None, False, weight=torch.zeros(3))
    assert zero.item() == 0.0 and torch.isfinite(zero)


def test_sample_weights_in_bce_and_the_scoring_head():
    softplus = lambda x: math.log1p(math.exp(x))
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    negs = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 2.0]]])
    neg_idx = torch.tensor([[4, 3], [5, 6]])                      # row 0's second negative is its positive (3)
    l0 = (softplus(-1.0) + softplus(0.0)) / 2                      # pos logit 1; one valid negative, logit 0
    l1 = (softplus(0.0) + softplus(1.0) + softplus(2.0)) / 3       # pos logit 0; negatives 1 and 2
    got = bce_loss(q, items, negs, torch.tensor([3, 9]), neg_idx, 1.0, weight=torch.tensor([3.0, 1.0])).item()
    assert abs(got - (3 * l0 + l1) / 4) < 1e-6
    assert abs(bce_loss(q, items, negs, torch.tensor([3, 9]), neg_idx, 1.0).item() - (l0 + l1) / 2) < 1e-6
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    cand = torch.tensor([[7, 8, 7], [1, 2, 3]])                    # row 0, column 2: an accidental hit
    h0, h1 = math.log(math.exp(2) + 1) - 2, math.log(3)
    got = head_softmax_loss(logits, cand, True, weight=torch.tensor([1.0, 3.0])).item()
    assert abs(got - (h0 + 3 * h1) / 4) < 1e-6


def test_compute_loss_reads_the_batch_weight(toy_schema, toy_tables, toy_batch):
    model = TwoTowerModel(toy_schema, ModelConfig(dropout=0.0, context_mode="scoring_layer"), *toy_tables).eval()

    def loss(**extra):
        torch.manual_seed(0)                                       # the same head candidates each call
        return compute_loss(model, toy_batch | extra).loss.item()

    plain = loss()
    assert abs(loss(weight=torch.full((8,), 3.0)) - plain) < 1e-6            # only relative weights matter
    assert abs(loss(weight=torch.arange(8.0)) - plain) > 1e-4
