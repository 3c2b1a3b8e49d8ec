"""DDP over gloo with sparse ID-table gradients: 2 local processes, torch.distributed only (no Ray).

Checks what the trainer relies on: DDP averages the sparse gradients of the two replicas exactly (the
gradient each rank steps with = mean of the two local gradients), a step changes only the union of the
two batches' rows, and the replicas stay identical with ``forward_sync_buffers=False``. And (in one
process) that a resumed run restores optimizer state only when ``optimizer``/``sparse_optimizer`` match.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from twotower.distributed.collective import weight_digest
from twotower.model.config import ModelConfig
from twotower.model.loss import compute_loss
from twotower.model.optim import build_optimizer
from twotower.model.schema import DatasetSchema, Feature
from twotower.model.twotower import TwoTowerModel

pytestmark = pytest.mark.timeout(120)

USERS, ITEMS, STEPS = 300, 400, 3
SCHEMA = DatasetSchema(num_users=USERS, num_items=ITEMS, history_length=4,
                       user_features=(Feature("gender", "categorical", 3),),
                       item_features=(Feature("year", "categorical", 5),), context_features=())


def _batch(rank: int, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * rank + step)
    lo, hi = (1, USERS // 2) if rank == 0 else (USERS // 2, USERS)        # disjoint users per rank
    return {"user_idx": torch.randint(lo, hi, (16,), generator=g),
            "item_idx": torch.randint(1, ITEMS, (16,), generator=g),
            "history": torch.randint(0, ITEMS, (16, 4), generator=g)}


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results = {}
    for buckets in (None, 97):
        cfg = ModelConfig(hidden_dims=[16], final_embedding_dim=8, user_embedding_dim=8, item_embedding_dim=8,
                          dropout=0.0, user_id_buckets=buckets)
        results[str(buckets)] = _train(rank, cfg)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def _train(rank: int, cfg: ModelConfig) -> dict:
    out = {}
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tables = ({"gender": rng.integers(0, 3, USERS)},
              {"year": rng.integers(0, 5, ITEMS), "train_count": rng.integers(1, 9, ITEMS)})
    model = DistributedDataParallel(TwoTowerModel(SCHEMA, cfg, *tables), forward_sync_buffers=False)
    opt = build_optimizer("adam", model, lr=0.01)
    table = model.module.user_tower.id_embedding.weight
    start = table.detach().clone()
    for step in range(STEPS):
        batch = _batch(rank, step)
        # local gradient of this rank's batch, without DDP's reduction
        local = TwoTowerModel(SCHEMA, cfg, *tables)
        local.load_state_dict(model.module.state_dict())
        torch.manual_seed(step)
        compute_loss(local, batch).loss.backward()
        mine = local.user_tower.id_embedding.weight.grad.to_dense()
        both = [torch.zeros_like(mine) for _ in range(2)]
        dist.all_gather(both, mine)
        opt.zero_grad()
        torch.manual_seed(step)
        compute_loss(model, batch).loss.backward()
        reduced = table.grad
        out[f"sparse_{step}"] = bool(reduced.is_sparse)
        out[f"grad_err_{step}"] = float((reduced.to_dense() - (both[0] + both[1]) / 2).abs().max())
        opt.step()
    users = torch.cat([_batch(r, s)["user_idx"] for s in range(STEPS) for r in range(2)])
    emb = model.module.user_tower.id_embedding
    rows = set((emb.buckets(users) if hasattr(emb, "buckets") else users).flatten().tolist())
    changed = set((table.detach() != start).any(1).nonzero().flatten().tolist())
    out["rows_ok"] = changed == rows
    out["digest"] = weight_digest(model.module)
    return out


def test_ddp_all_reduces_sparse_grads_and_replicas_stay_identical(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for buckets in ("None", "97"):                   # one row per user / user ids hashed into 97 rows
        for out in ranks:
            for step in range(STEPS):
                assert out[buckets][f"sparse_{step}"]
                assert out[buckets][f"grad_err_{step}"] < 1e-6
            assert out[buckets]["rows_ok"]           # hashed: the rows are the users' buckets
        assert ranks[0][buckets]["digest"] == ranks[1][buckets]["digest"]


def test_resume_restores_optimizer_state_only_for_the_same_optimizers():
    """A sparse_optimizer changed between runs is detected: the other optimizer's state would load without
    complaint and then break the first step (control below), so resuming starts that state afresh."""
    from twotower.distributed.config import TrainConfig
    from twotower.distributed.train_state import optimizer_changes

    saved = TrainConfig(sparse_optimizer="rowwise_adagrad").model_dump(mode="json")
    assert optimizer_changes(saved, TrainConfig(sparse_optimizer="rowwise_adagrad")) == []
    assert optimizer_changes(saved, TrainConfig()) == ["sparse_optimizer=rowwise_adagrad"]
    assert optimizer_changes({**saved, "optimizer": "sgd"}, TrainConfig()) == ["optimizer=sgd",
                                                                                "sparse_optimizer=rowwise_adagrad"]
    assert optimizer_changes({"optimizer": "adam"}, TrainConfig()) == []      # checkpoint older than the option

    model = TwoTowerModel(SCHEMA, ModelConfig())
    rowwise = build_optimizer("adam", model, 1e-3, 0.0, "rowwise_adagrad")
    compute_loss(model, _batch(0, 0)).loss.backward()
    rowwise.step()
    sparse_adam = build_optimizer("adam", model, 1e-3, 0.0, "auto")
    sparse_adam.load_state_dict(rowwise.state_dict())                       # accepted silently ...
    model.zero_grad()
    compute_loss(model, _batch(0, 1)).loss.backward()
    with pytest.raises(KeyError):                                           # ... and the step fails
        sparse_adam.step()
