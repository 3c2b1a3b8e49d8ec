"""The score Ray Train ranks checkpoints by: the monitored metric, earliest epoch on ties (as TrainState)."""
from __future__ import annotations

from twotower.distributed.config import TrainConfig
from twotower.distributed.train_loop import checkpoint_score
from twotower.distributed.train_state import TrainState


def test_of_tied_epochs_the_earliest_ranks_highest_as_train_state_picks_it():
    values = {7: 0.1803, 8: 0.1856, 9: 0.1856, 10: 0.1697, 11: 0.1856}      # the README run's ties
    state, cfg = TrainState(), TrainConfig(patience=0)
    for epoch, value in values.items():
        state.end_epoch(epoch, value, cfg)
    ranked = sorted(values, key=lambda e: checkpoint_score(values[e], e), reverse=True)
    assert ranked == [8, 9, 11, 7, 10] and state.best_epoch == ranked[0] == 8


def test_a_real_difference_outranks_any_epoch_order():
    one_user_of_ten_million = 1e-7
    assert checkpoint_score(0.1 + one_user_of_ten_million, 10_000) > checkpoint_score(0.1, 1)
    assert checkpoint_score(0.25, 3) == 0.25 - 3e-12
