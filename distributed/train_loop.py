"""The per-worker training function that Ray Train runs on every worker (``train_loop_per_worker``).

Metrics reported to Ray Train once per epoch (rank 0's values are the ones Ray keeps):
``epoch`` (1-based), ``train_loss`` (mean over all workers' steps), ``valid_<metric>`` for every
metric of ``RankingAccumulator.finalize`` (``valid_recall@10``, ``valid_ndcg@10``,
``valid_sampled_hr@10``, ...), ``steps`` (per worker), ``seconds`` (epoch wall time),
``examples_per_s`` (training examples of all workers per training second), ``best_epoch``,
``best_valid_recall@k`` and ``stop`` (1 when early stopping ends the run after this epoch).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import ray.train
import ray.train.torch
import torch

from twotower.data.tables import load_feature_tables
from twotower.distributed.collective import (all_gather_object, all_gather_with_grad, all_reduce_sums,
                                             weight_digest)
from twotower.distributed.config import TrainConfig
from twotower.distributed.data import eval_batch_size, iter_eval_batches, iter_train_batches
from twotower.distributed.watchdog import ProgressReporter
from twotower.model.checkpoint import load_checkpoint, save_checkpoint
from twotower.model.loss import compute_loss
from twotower.model.metrics import RankingAccumulator
from twotower.model.optim import build_optimizer as build_model_optimizer
from twotower.model.schema import DatasetSchema
from twotower.model.twotower import TwoTowerModel

LOG_EVERY_STEPS = 50
SAMPLED_NEGATIVES = 100


def eval_ks(cfg: TrainConfig) -> list[int]:
    """Cut-offs evaluated on the validation split: ``eval_ks`` plus ``monitor_k``, sorted."""
    return sorted(set(cfg.eval_ks) | {cfg.monitor_k})


def monitor_key(cfg: TrainConfig) -> str:
    """Reported metric that early stopping and checkpoint ranking use, e.g. ``valid_recall@10``."""
    return f"valid_recall@{cfg.monitor_k}"


@dataclass
class TrainState:
    """Everything besides weights/optimizer needed to resume: stored in the checkpoint's ``extra``."""

    epoch: int = 0                      # completed epochs
    best_metric: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0                 # epochs since the last improvement
    history: list[dict] = field(default_factory=list)
    resumed_after_epochs: list[int] = field(default_factory=list)   # restarts from the run's own checkpoint

    @classmethod
    def from_checkpoint_meta(cls, meta: dict) -> "TrainState":
        saved = (meta.get("extra") or {}).get("train_state")
        if saved:
            return cls(**saved)
        return cls(epoch=int(meta.get("epoch") or 0))


def optimizer_changes(saved_train_config: dict, cfg: TrainConfig) -> list[str]:
    """``"key=value"`` of each optimizer setting (``optimizer``, ``sparse_optimizer``) in which a
    checkpoint's train config differs from ``cfg``; empty when its optimizer state can be restored.
    (A different optimizer's state has other keys and shapes: SparseAdam's moments vs row-wise Adagrad's
    one value per row.) A checkpoint from before ``sparse_optimizer`` existed counts as ``auto``."""
    defaults = {"optimizer": cfg.optimizer, "sparse_optimizer": "auto"}
    return [f"{key}={saved_train_config.get(key, default)}" for key, default in defaults.items()
            if saved_train_config.get(key, default) != getattr(cfg, key)]


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module):
    """``cfg.optimizer`` (adam / adamw / adagrad; sgd with momentum 0.9) with ``lr`` and ``weight_decay``
    over ``model``'s parameters; sparse ID tables get a sparse-capable optimizer without weight decay
    (``cfg.sparse_optimizer``; see :func:`twotower.model.optim.build_optimizer`)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError("build_optimizer takes the model (sparse ID tables need their own optimizer), "
                        f"not {type(model).__name__}")
    return build_model_optimizer(cfg.optimizer, model, cfg.lr, cfg.weight_decay, cfg.sparse_optimizer)


def train_loop_per_worker(config: dict) -> dict:
    """Train, validate and checkpoint on one Ray Train worker; returns a summary (rank 0's is kept).

    ``config`` keys: ``train_config`` (TrainConfig as a dict), ``dataset_dir``, optional ``tracker``
    (ProgressTracker handle for the stall watchdog), ``steps_per_epoch`` (for progress lines only),
    ``log_every`` (steps between rank-0 progress lines).

    Returns ``{"history": [per-epoch metrics], "weight_digests": [sha256 of each rank's final
    weights], "best_epoch", "stopped_early", "resumed_after_epochs": [epochs after which this run
    continued from its own checkpoint]}``.

    Raises:
        FloatingPointError: the training loss became NaN/inf.
    """
    cfg = TrainConfig.model_validate(config["train_config"])
    dataset_dir = config["dataset_dir"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    progress = ProgressReporter(config.get("tracker"))
    log_every = int(config.get("log_every") or LOG_EVERY_STEPS)
    say = _console if rank == 0 else (lambda msg: None)
    _quiet_report_logs()

    # 1. seed (identical on every rank, so the initial weights match before DDP broadcasts rank 0's)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    # 2. model from the schema and the feature tables
    schema = DatasetSchema.load(dataset_dir)
    user_table, item_table = load_feature_tables(dataset_dir)
    model = TwoTowerModel(schema, cfg.model, user_table, item_table)

    # 3. resume: Ray's latest checkpoint of this run (the worker group was restarted after a worker
    #    failure; the last epoch whose report every worker made) wins over resume_from
    state, optimizer_state = TrainState(), None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None or cfg.resume_from:
        source = checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext(cfg.resume_from)
        with source as path:
            loaded = load_checkpoint(path)
        model.load_state_dict(loaded.model.state_dict())
        state, optimizer_state = TrainState.from_checkpoint_meta(loaded.meta), loaded.optimizer_state
        if checkpoint is not None:
            state.resumed_after_epochs.append(state.epoch)
            say(f"resuming after epoch {state.epoch} from the run's checkpoint after a worker failure "
                f"({os.path.basename(checkpoint.path)})")
        else:
            state.resumed_after_epochs = []        # restarts of this run only, not of the one resumed from
            say(f"resuming after epoch {state.epoch} from {cfg.resume_from}")
        progress.beat(force=True, stage="resumed", epoch=state.epoch)

    # 4. DDP + optimizer (+ restored optimizer state)
    # feature tables and item_prob are constant buffers: synced once at init, not broadcast every step
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"forward_sync_buffers": False})
    optimizer = build_optimizer(cfg, model)
    changed = optimizer_changes(loaded.train_config, cfg) if optimizer_state is not None else []
    if optimizer_state is not None and not changed:
        optimizer.load_state_dict(optimizer_state)                     # moments/step counts ...
        for group in optimizer.param_groups:                            # ... but lr/decay of this config
            group.update(lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif optimizer_state is not None:
        say(f"not restoring the optimizer state: the checkpoint used {', '.join(changed)}")
    torch.manual_seed(cfg.seed + 7919 * rank + state.epoch)          # dropout: differs per rank
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rank * 7919 + state.epoch)
    gather = all_gather_with_grad if cfg.gather_negatives and world > 1 else None
    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    core = getattr(model, "module", model)

    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        # 5. one pass over this worker's streaming shard
        model.train()
        steps, loss_sum, examples = 0, 0.0, 0
        for batch in iter_train_batches(train_shard, cfg.batch_size, seed=cfg.seed, epoch=epoch,
                                        rank=rank, device=device):
            out = compute_loss(model, batch, gather=gather, rank=rank, generator=generator)
            if not math.isfinite(out.logs["loss"]):
                raise FloatingPointError(f"training loss is {out.logs['loss']} at epoch {epoch} step "
                                         f"{steps + 1} (rank {rank}); lower lr or raise temperature")
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            steps, loss_sum, examples = steps + 1, loss_sum + out.logs["loss"], examples + len(batch["item_idx"])
            progress.beat(stage="train", epoch=epoch, step=steps)
            if steps % log_every == 0:
                rate = examples * world / (time.perf_counter() - t0)
                say(f"epoch {epoch}/{cfg.epochs} step {steps}/{config.get('steps_per_epoch', '?')} "
                    f"loss {loss_sum / steps:.4f} {rate:,.0f} examples/s")
            if cfg.max_steps_per_epoch and steps >= cfg.max_steps_per_epoch:
                break
        train_seconds = time.perf_counter() - t0
        totals = all_reduce_sums({"loss": loss_sum, "steps": steps, "examples": examples}, device)

        # 6. validation: every worker ranks its shard with the unwrapped model; sums all-reduced
        valid = validate(core, valid_shard, schema, eval_ks(cfg), device, progress, epoch)

        # 7. early stopping, decided from all-reduced metrics, so every worker takes the same decision
        value = valid[f"recall@{cfg.monitor_k}"]
        if value > state.best_metric:
            state.best_metric, state.best_epoch, state.bad_epochs = value, epoch, 0
        else:
            state.bad_epochs += 1
        stop = cfg.patience > 0 and state.bad_epochs >= cfg.patience and epoch < cfg.epochs
        metrics = {"epoch": epoch, "train_loss": totals["loss"] / max(totals["steps"], 1.0),
                   **{f"valid_{k}": v for k, v in valid.items()}, "steps": steps,
                   "seconds": time.perf_counter() - t0,
                   "examples_per_s": totals["examples"] / max(train_seconds, 1e-9),
                   "best_epoch": state.best_epoch, f"best_{monitor_key(cfg)}": state.best_metric,
                   "stop": int(stop)}
        state.epoch = epoch
        state.history.append(metrics)
        say(f"epoch {epoch}/{cfg.epochs} done: train_loss {metrics['train_loss']:.4f} "
            f"{monitor_key(cfg)} {value:.4f} (best {state.best_metric:.4f} @ epoch {state.best_epoch}) "
            f"{metrics['seconds']:.1f}s {metrics['examples_per_s']:,.0f} examples/s")

        # 8. report; rank 0 alone writes the checkpoint (model + optimizer + TrainState)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_checkpoint(model, tmp, train_config=cfg.model_dump(mode="json"), dataset_dir=str(dataset_dir),
                                metrics={k: v for k, v in metrics.items() if k.startswith("valid_")},
                                epoch=epoch, optimizer_state=optimizer.state_dict(),
                                extra={"train_state": dataclasses.asdict(state)})
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch_{epoch:04d}")
        progress.beat(force=True, stage="reported", epoch=epoch)
        if stop:
            say(f"early stopping: no {monitor_key(cfg)} improvement for {state.bad_epochs} epochs")
            break

    # 9. every rank's final weights, to check that DDP kept the replicas identical
    digests = all_gather_object(weight_digest(core))
    return {"history": state.history, "weight_digests": digests, "best_epoch": state.best_epoch,
            "stopped_early": bool(state.history and state.history[-1]["stop"]),
            "resumed_after_epochs": state.resumed_after_epochs}


def _console(msg: str) -> None:
    """Progress line to the worker's stdout (Ray forwards it to the driver). Not ``print``: Ray Train
    patches ``print`` in workers to log through its logger, which showed every line twice."""
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def _quiet_report_logs() -> None:
    """Ray Train 2.60 logs every ``report()`` with its full metrics at INFO on a logger named after its
    source file (outside ``ray.train``, so ``LoggingConfig`` does not reach it); raise it to WARNING."""
    suffix = os.path.join("train", "v2", "_internal", "execution", "context.py")
    for name in list(logging.root.manager.loggerDict):
        if name.endswith(suffix):
            logging.getLogger(name).setLevel(logging.WARNING)


@torch.no_grad()
def validate(core: TwoTowerModel, shard, schema: DatasetSchema, ks: list[int], device,
             progress: ProgressReporter | None = None, epoch: int = 0) -> dict[str, float]:
    """Full-ranking metrics of ``core`` (unwrapped, not DDP) on this worker's shard, summed over workers.

    Returns ``RankingAccumulator.finalize`` of the all-reduced sums (``recall@k``, ``ndcg@k``, ...,
    ``count`` = number of validation queries of all workers). Leaves ``core`` in train mode.
    """
    core.eval()
    acc = RankingAccumulator(ks, schema.num_items, sampled_negatives=SAMPLED_NEGATIVES)
    item_embs = core.all_item_embeddings()
    for batch, seen in iter_eval_batches(shard, schema, eval_batch_size(schema.num_items), device=device):
        acc.add(core.rank_scores(batch, item_embs), batch["item_idx"], seen, user_idx=batch["user_idx"])
        if progress is not None:
            progress.beat(stage="validate", epoch=epoch)
    core.train()
    return RankingAccumulator.finalize(all_reduce_sums(acc.sums(), device))

