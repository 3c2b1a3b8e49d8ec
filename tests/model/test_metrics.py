import math

import numpy as np
import torch

from twotower.model.metrics import RankingAccumulator, popularity_scores


def _finalize(acc):
    return RankingAccumulator.finalize(acc.sums())


def test_full_ranking_recall_and_ndcg_values():
    # 6 items (index 0 unknown). Row 0: target 3 ranked 3rd (items 5, 4 above) -> rank 2.
    # Row 1: target 1 ranked 1st once seen item 2 is excluded -> rank 0.
    scores = torch.tensor([[9.0, 1.0, 2.0, 3.0, 4.0, 5.0],
                           [9.0, 5.0, 6.0, 1.0, 2.0, 3.0]])
    acc = RankingAccumulator([1, 3], num_items=6, sampled_negatives=0)
    acc.add(scores, torch.tensor([3, 1]), [np.array([], dtype=np.int64), np.array([2])])
    m = _finalize(acc)
    assert m["count"] == 2
    assert m["recall@1"] == m["hr@1"] == 0.5
    assert m["recall@3"] == 1.0
    assert math.isclose(m["ndcg@3"], (1 / math.log2(4) + 1.0) / 2)
    assert math.isclose(m["ndcg@1"], 0.5)


def test_unknown_item_zero_is_never_ranked():
    scores = torch.tensor([[100.0, 1.0, 0.0]])
    acc = RankingAccumulator([1], num_items=3, sampled_negatives=0)
    acc.add(scores, torch.tensor([1]), [None])
    assert _finalize(acc)["hr@1"] == 1.0


def test_sampled_metrics_are_seeded_and_batch_independent():
    rng = np.random.default_rng(0)
    scores = torch.tensor(rng.normal(size=(4, 500)), dtype=torch.float32)
    target = torch.tensor([10, 20, 30, 40])
    seen = [np.array([1, 2, 3]), np.array([4]), np.array([], dtype=np.int64), np.array([5, 6])]
    users = torch.tensor([1, 2, 3, 4])
    a = RankingAccumulator([10], 500, seed=7)
    a.add(scores, target, seen, users)
    b = RankingAccumulator([10], 500, seed=7)
    b.add(scores[:2], target[:2], seen[:2], users[:2])
    b.add(scores[2:], target[2:], seen[2:], users[2:])
    assert _finalize(a) == _finalize(b)
    assert 0.0 <= _finalize(a)["sampled_hr@10"] <= 1.0


def test_sampled_hr_is_one_when_target_outscores_everything():
    scores = torch.zeros(1, 300)
    scores[0, 7] = 1.0
    acc = RankingAccumulator([10], 300)
    acc.add(scores, torch.tensor([7]), [np.array([1, 2])], torch.tensor([1]))
    m = _finalize(acc)
    assert m["sampled_hr@10"] == 1.0 and m["sampled_ndcg@10"] == 1.0


def test_sampled_negatives_avoid_seen_items():
    acc = RankingAccumulator([10], 50, sampled_negatives=20)
    seen = np.arange(1, 30)
    neg = acc._sample_negatives(user=3, target=40, excluded=np.union1d(seen, [0, 40]))
    assert len(neg) == 20 and not np.isin(neg, np.union1d(seen, [0, 40])).any()


def test_popularity_scores_follow_counts():
    s = popularity_scores(np.array([0, 5, 1, 9]))
    assert s.argsort(descending=True).tolist()[:2] == [3, 1]


def test_ties_give_no_credit_to_a_constant_scorer():
    # every item scores the same: target 5 has items 1..4 ranked before it (smaller indices)
    acc = RankingAccumulator([1, 5], num_items=10, sampled_negatives=0)
    acc.add(torch.ones(1, 10), torch.tensor([5]), [None])
    m = _finalize(acc)
    assert m["hr@1"] == 0.0 and m["hr@5"] == 1.0
    assert math.isclose(m["ndcg@5"], 1 / math.log2(4 + 2))
