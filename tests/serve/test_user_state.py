"""``UserState.load`` from the sequences: every interaction once (a window's prefix is not counted
again), most recent first, whatever the window size and the order of the files."""
from __future__ import annotations

import numpy as np
import pytest

from twotower.data.sequences import SEQUENCES_DIR, build_sequence_rows, write_sequence_file
from twotower.data.split import leave_last_out
from twotower.data.vocab import write_vocab
from twotower.serve.user_state import UserState
from twotower.model.schema import DatasetSchema

USERS = 6


def _events(seed: int = 0):
    """Interactions sorted by (user, timestamp, row), with timestamp ties and repeated items; user 3
    has none."""
    rng = np.random.default_rng(seed)
    lengths = np.array([0, 7, 1, 0, 12, 4, 9])[1:]
    user = np.repeat(np.arange(1, USERS + 1), lengths)
    ts = np.concatenate([np.sort(rng.integers(0, 5, n)) for n in lengths])      # many ties
    item = rng.integers(1, 6, len(user))
    return user, item, ts, leave_last_out(user)


def _dataset(root, window: int):
    """A prepared-dataset directory with sequence rows of ``window`` entries, users 4..6 in the first
    file and 1..3 in the second."""
    user, item, ts, split = _events()
    schema = DatasetSchema(num_users=USERS + 1, num_items=6, history_length=2, sequence_window=window)
    (root / SEQUENCES_DIR).mkdir(parents=True)
    schema.save(root / "schema.json")
    write_vocab(root, "users", [str(u) for u in range(1, USERS + 1)])
    late = user >= 4
    for name, keep in (("part-00000.parquet", late), ("part-00001.parquet", ~late)):
        rows = build_sequence_rows(user[keep], item[keep], ts[keep], split[keep], schema)
        write_sequence_file(rows, str(root / SEQUENCES_DIR / name))
    return root


@pytest.mark.parametrize("window", [1, 3, 1000])
def test_items_are_each_interaction_once_most_recent_first(tmp_path, window):
    state = UserState.load(_dataset(tmp_path, window))
    user, item, _, _ = _events()
    assert state.offsets.tolist() == np.r_[0, np.cumsum(np.bincount(user, minlength=USERS + 1))].tolist()
    for u in range(USERS + 1):
        mine = item[user == u][::-1]                               # raw order reversed: most recent first
        assert state.items[state.offsets[u]:state.offsets[u + 1]].tolist() == mine.tolist(), u
        assert state.history(u).tolist() == (mine[:2].tolist() + [0, 0])[:2]
        assert state.seen(u).tolist() == sorted(set(mine.tolist()))
    assert state.items.dtype == np.int32 and len(state.items) == len(user)
    assert state.lookup("5") == 5 and state.lookup("7") == 0


def test_no_sequence_file_is_a_clear_error(tmp_path):
    root = _dataset(tmp_path, 3)
    for f in (root / SEQUENCES_DIR).iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match="sequences: no parquet files"):
        UserState.load(root)
