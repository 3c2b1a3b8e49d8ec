"""scikit-rec side of ``bench/vs_scikit_rec.py``: runs under scikit-rec's own interpreter (not a test).

    /work/skrec-venv/bin/python bench/_skrec_side.py WORK_DIR

Only numpy, pandas, torch and skrec are imported here (scikit-rec pins numpy 1.26 / pandas 2.3, so it
lives in its own virtual environment and twotower is not importable). ``vs_scikit_rec.py`` writes into
WORK_DIR:

* ``train.parquet`` / ``valid.parquet``: USER_ID, ITEM_ID (str), OUTCOME (1 positive, 0 sampled
  negative) and the numeric context columns; ``users.parquet`` / ``items.parquet``: USER_ID / ITEM_ID
  and numeric side features (one-hot / multi-hot);
* ``eval.parquet``: one row per evaluation query (USER_ID and the context columns), in twotower's order;
  ``catalogue.json``: ``{"item_ids": [...], "config": {...}}``, the ITEM_IDs of twotower's item indices
  1..num_items-1 and the estimator's keyword arguments.

The estimator is trained through ``RankingRecommender.train`` (its public path). Its training loop has no
per-epoch hook, so :class:`EpochwiseTwoTower` runs scikit-rec's own ``_training_loop`` one epoch at a
time with the same optimizer object and the same per-epoch shuffle seed (``random_state + epoch``), then
(untimed) computes the validation loss and early stopping exactly as that loop does, and scores every
(query, catalogue item) pair with the model's forward. Per epoch it writes ``scores_EEE.npy``
(queries, num_items) float32 logits, column 0 (twotower's unknown item) = 0, and at the end
``result.json`` with per-epoch training seconds (training only), validation loss and the best epoch.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

torch.set_num_threads(1)

from skrec.dataset.interactions_dataset import InteractionsDataset  # noqa: E402
from skrec.dataset.items_dataset import ItemsDataset  # noqa: E402
from skrec.dataset.users_dataset import UsersDataset  # noqa: E402
from skrec.estimator.embedding.contextualized_two_tower_estimator import ContextualizedTwoTowerEstimator  # noqa: E402
from skrec.recommender.ranking.ranking_recommender import RankingRecommender  # noqa: E402
from skrec.scorer.universal import UniversalScorer  # noqa: E402

SCORE_CHUNK = 262_144      # (query, item) pairs per forward call when scoring the catalogue


class EpochwiseTwoTower(ContextualizedTwoTowerEstimator):
    """ContextualizedTwoTowerEstimator whose training loop reports after every epoch (see module doc)."""

    on_epoch = None        # callable(epoch, model) -> None, set by main()
    log: list[dict] = []

    def _training_loop(self, model, optimizer, loss_fn, user_idx_t, item_idx_t, interaction_feats_t, labels_t,
                       epochs, batch_size, device, random_state, verbose, valid_user_idx_t=None,
                       valid_item_idx_t=None, valid_interaction_feats_t=None, valid_labels_t=None,
                       valid_user_features_t=None, early_stopping_patience=None, restore_best_weights=True):
        best_loss, best_state, best_epoch, waited = float("inf"), None, 0, 0
        for epoch in range(epochs):
            t0 = time.perf_counter()
            super()._training_loop(model, optimizer, loss_fn, user_idx_t, item_idx_t, interaction_feats_t,
                                   labels_t, epochs=1, batch_size=batch_size, device=device,
                                   random_state=None if random_state is None else random_state + epoch,
                                   verbose=0)
            train_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            val_loss = _validation_loss(model, loss_fn, valid_user_idx_t, valid_item_idx_t,
                                        valid_interaction_feats_t, valid_labels_t, valid_user_features_t,
                                        batch_size, device)
            val_s = time.perf_counter() - t1
            self.on_epoch(epoch + 1, model)
            model.train()
            self.log.append({"epoch": epoch + 1, "train_s": train_s, "rows": int(len(labels_t)),
                             "val_loss": val_loss, "val_loss_s": val_s})
            print(f"scikit-rec epoch {epoch + 1}: {train_s:.1f} s, {len(labels_t) / train_s:,.0f} rows/s, "
                  f"val loss {val_loss:.4f}", flush=True)
            if early_stopping_patience is None:
                continue
            if val_loss < best_loss:       # same rule as BasePyTorchEmbeddingEstimator._training_loop
                best_loss, best_epoch, waited = val_loss, epoch + 1, 0
                if restore_best_weights:
                    best_state = copy.deepcopy(model.state_dict())
            else:
                waited += 1
                if waited >= early_stopping_patience:
                    break
        if restore_best_weights and best_state is not None:
            model.load_state_dict(best_state)
        self.best_epoch = best_epoch or len(self.log)


@torch.no_grad()
def _validation_loss(model, loss_fn, users, items, feats, labels, user_feats, batch_size, device) -> float:
    """Mean over batches of the loss on the validation rows (as scikit-rec's loop computes it)."""
    model.eval()
    total, batches = 0.0, 0
    for s in range(0, len(users), batch_size):
        pred = model(user_indices=users[s:s + batch_size].to(device), item_indices=items[s:s + batch_size].to(device),
                     interaction_features=feats[s:s + batch_size].to(device), user_embeddings=None,
                     user_features=user_feats)
        total += loss_fn(pred, labels[s:s + batch_size].to(device)).item()
        batches += 1
    model.train()
    return total / max(batches, 1)


@torch.no_grad()
def score_catalogue(est: ContextualizedTwoTowerEstimator, queries: pd.DataFrame, item_ids: list[str]) -> np.ndarray:
    """Logits (len(queries), 1 + len(item_ids)) float32 of every query against every catalogue item.

    Uses the model's own forward on (query, item) pairs with the query's context; ids unknown to the
    estimator map to its unknown index, as in ``predict_proba_with_embeddings``. Column 0 is 0.
    """
    model = est.model
    model.eval()
    u = est.user_id_index.get_indexer(queries["USER_ID"])
    u[u == -1] = est.unknown_user_idx
    i = est.item_id_index.get_indexer(pd.Index(item_ids))
    i[i == -1] = est.unknown_item_idx
    ctx = torch.tensor(queries[est.interaction_feature_names].to_numpy(np.float32))
    q, m = len(queries), len(item_ids)
    uu = torch.as_tensor(u, dtype=torch.long).repeat_interleave(m)
    ii = torch.as_tensor(i, dtype=torch.long).repeat(q)
    rows = torch.arange(q).repeat_interleave(m)
    out = torch.empty(q * m)
    for s in range(0, q * m, SCORE_CHUNK):
        e = min(s + SCORE_CHUNK, q * m)
        out[s:e] = model(user_indices=uu[s:e], item_indices=ii[s:e], interaction_features=ctx[rows[s:e]]).squeeze(1)
    scores = np.zeros((q, m + 1), dtype=np.float32)
    scores[:, 1:] = out.view(q, m).numpy()
    return scores


def main(work: Path) -> None:
    meta = json.loads((work / "catalogue.json").read_text())
    queries = pd.read_parquet(work / "eval.parquet")
    queries["USER_ID"] = queries["USER_ID"].astype(str)
    est = EpochwiseTwoTower(**meta["config"])
    score_s: list[float] = []

    def on_epoch(epoch: int, model) -> None:
        t0 = time.perf_counter()
        np.save(work / f"scores_{epoch:03d}.npy", score_catalogue(est, queries, meta["item_ids"]))
        score_s.append(time.perf_counter() - t0)

    est.on_epoch = on_epoch
    recommender = RankingRecommender(UniversalScorer(est))
    t0 = time.perf_counter()
    recommender.train(interactions_ds=InteractionsDataset(data_location=str(work / "train.parquet")),
                      users_ds=UsersDataset(data_location=str(work / "users.parquet")),
                      items_ds=ItemsDataset(data_location=str(work / "items.parquet")),
                      valid_interactions_ds=InteractionsDataset(data_location=str(work / "valid.parquet")))
    total_s = time.perf_counter() - t0
    import skrec
    (work / "result.json").write_text(json.dumps({
        "epochs": est.log, "best_epoch": est.best_epoch, "train_call_s": total_s, "score_s": score_s,
        "version": getattr(skrec, "__version__", "?"), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "context_features": est.interaction_feature_names,
        "user_features": len(est.user_feature_names), "item_features": len(est.item_feature_names)}))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: _skrec_side.py WORK_DIR (written by bench/vs_scikit_rec.py)")
    main(Path(sys.argv[1]))
