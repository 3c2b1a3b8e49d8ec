"""Fixtures of the index tests: a briefly trained ML-100K checkpoint, its item embeddings and queries.

``ml100k_dataset`` and ``ray_cluster`` come from ``tests/conftest.py``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

TRAIN_STEPS = 150


@pytest.fixture(scope="session")
def ml100k_checkpoint(ml100k_dataset, tmp_path_factory):
    """A TwoTowerModel (D=32) trained in-process for a few steps on ML-100K train, saved as a checkpoint."""
    from twotower.data.splits import read_split_examples
    from twotower.data.tables import load_feature_tables
    from twotower.model.batch import to_tensors
    from twotower.model.checkpoint import save_checkpoint
    from twotower.model.config import ModelConfig
    from twotower.model.loss import compute_loss
    from twotower.model.optim import build_optimizer
    from twotower.model.schema import DatasetSchema
    from twotower.model.twotower import TwoTowerModel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # much faster than 2 threads when the 2 cores are shared
    schema = DatasetSchema.load(ml100k_dataset)
    users, items = load_feature_tables(ml100k_dataset)
    torch.manual_seed(0)
    model = TwoTowerModel(schema, ModelConfig(final_embedding_dim=32, hidden_dims=[64], dropout=0.0), users, items)
    cols = read_split_examples(ml100k_dataset, "train", schema)
    opt = build_optimizer("adam", model, lr=3e-3)
    perm, batch = np.random.default_rng(0).permutation(len(cols["item_idx"])), 512
    for step in range(TRAIN_STEPS):
        rows = perm[step * batch:(step + 1) * batch]
        loss = compute_loss(model, to_tensors({k: v[rows] for k, v in cols.items()}, schema)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    out = tmp_path_factory.mktemp("index-ckpt") / "ckpt"
    return save_checkpoint(model.eval(), out, dataset_dir=str(ml100k_dataset))


@pytest.fixture(scope="session")
def ml100k_model(ml100k_checkpoint):
    from twotower.model.checkpoint import load_checkpoint
    return load_checkpoint(ml100k_checkpoint).model


@pytest.fixture(scope="session")
def ml100k_item_embeddings(ml100k_model) -> np.ndarray:
    """(num_items, 32) float32 item tower output; row i = item i (row 0 = unknown item)."""
    return ml100k_model.all_item_embeddings().numpy()


@pytest.fixture(scope="session")
def ml100k_queries(ml100k_model, ml100k_dataset):
    """(query embeddings (943, 32) float32 of the test examples, their seen_items lists)."""
    from twotower.data.sequences import SEEN_COLUMN
    from twotower.data.splits import read_split_examples
    from twotower.model.batch import to_tensors
    batch = read_split_examples(ml100k_dataset, "test", ml100k_model.schema, with_seen=True)
    seen = [np.asarray(s, dtype=np.int64) for s in batch.pop(SEEN_COLUMN)]
    with torch.no_grad():
        queries = ml100k_model.query_embedding(to_tensors(batch, ml100k_model.schema)).numpy()
    return queries.astype(np.float32), seen


@pytest.fixture(scope="session")
def brute_force():
    """The reference top-k function (see ``brute_force_topk``)."""
    return brute_force_topk


def brute_force_topk(embeddings: np.ndarray, queries: np.ndarray, k: int, exclude=None):
    """Reference: full NumPy sort of q @ E[1:].T by (-score, item_idx); item 0 is never a candidate."""
    scores = queries @ embeddings[1:].T
    ids = np.arange(1, len(embeddings))
    out_s, out_i = [], []
    for r in range(len(queries)):
        s = scores[r].copy()
        if exclude is not None:
            s[np.isin(ids, exclude[r])] = -np.inf
        order = np.lexsort((ids, -s))[:k]
        out_s.append(s[order])
        out_i.append(ids[order])
    return np.array(out_s, np.float32), np.array(out_i, np.int64)
