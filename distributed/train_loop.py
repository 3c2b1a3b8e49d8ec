"""The per-worker training function that Ray Train runs on every worker (``train_loop_per_worker``).

Metrics reported to Ray Train once per epoch (rank 0's values are the ones Ray keeps):
``epoch`` (1-based), ``train_loss`` (mean over all workers' steps), ``valid_<metric>`` for every
metric of ``RankingAccumulator.finalize`` (``valid_recall@10``, ``valid_ndcg@10``,
``valid_sampled_hr@10``, ...), ``steps`` (per worker), ``seconds`` (epoch wall time),
``train_seconds`` (the training part of it, validation and checkpoint excluded),
``examples_per_s`` (training examples of all workers per training second; positions for
``examples: sequence``), ``data_wait_s`` (seconds the training thread waited for batches, mean of the
workers: the input pipeline's stall time), ``best_epoch``,
``best_valid_recall@k``, ``stop`` (1 when early stopping ends the run after this epoch) and
``checkpoint_score`` (what Ray ranks the checkpoints by: :func:`checkpoint_score`).

The loop reads top to bottom: :func:`setup` (seed, model, restored state, DDP, optimizer), then the
epoch loop whose step is ``batch -> compute_loss -> backward -> step``, then validation and the
report. Ray-specific pieces sit at the edges: :func:`restore` (Ray's own checkpoint after a worker
failure, or ``resume_from``), the dataset shards, and :func:`report` (metrics + rank 0's checkpoint).
Everything about the run comes resolved from the driver (:class:`~twotower.distributed.run.ResolvedRun`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import ray.train
import ray.train.torch
import torch

from twotower.data.tables import load_feature_tables
from twotower.distributed.collective import (all_gather_object, all_gather_with_grad, all_reduce_sums,
                                             weight_digest)
from twotower.distributed.data import iter_eval_batches
from twotower.distributed.example_cache import GIB, ExampleCache
from twotower.distributed.run import ResolvedRun
from twotower.distributed.train_state import TrainState, optimizer_changes
from twotower.distributed.train_stream import TimedBatches, TrainStream
from twotower.distributed.watchdog import ProgressReporter
from twotower.model.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from twotower.model.loss import compute_loss
from twotower.model.metrics import RankingAccumulator, eval_batch_size
from twotower.model.optim import build_optimizer
from twotower.model.schema import DatasetSchema
from twotower.model.twotower import TwoTowerModel

CHECKPOINT_SCORE = "checkpoint_score"


def train_loop_per_worker(config: dict) -> dict:
    """Train, validate and checkpoint on one Ray Train worker; returns a summary (rank 0's is kept).

    ``config``: ``{"run": ResolvedRun, "tracker": ProgressTracker handle or None (stall watchdog and
    progress display)}``.

    Returns ``{"history": [per-epoch metrics], "weight_digests": [sha256 of each rank's final
    weights], "best_epoch", "stopped_early", "resumed_after_epochs": [epochs after which this run
    continued from its own checkpoint], "torch_threads": [each rank's intra-op threads]}``.

    Raises:
        FloatingPointError: the training loss became NaN/inf.
    """
    run: ResolvedRun = config["run"]
    cfg, w = run.config, Worker.start(config)
    model, optimizer, state = setup(run, w)
    core = getattr(model, "module", model)
    gather = all_gather_with_grad if cfg.gather_negatives and w.world > 1 else None
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + w.rank * 7919 + state.epoch)
    cache = ExampleCache(int(cfg.train_cache_gib * GIB), run.steps_per_pass) if cfg.train_cache_gib else None
    stream = TrainStream(ray.train.get_dataset_shard("train"), cfg.batch_size, seed=cfg.seed, rank=w.rank,
                         first_pass=state.epoch + 1, device=w.device, windows=cfg.examples == "sequence",
                         cache=cache, say=w.say)
    valid_shard = ray.train.get_dataset_shard("valid")

    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        for group in optimizer.param_groups:                   # the step schedule (TrainConfig.lr_at)
            group["lr"] = cfg.lr_at(epoch)
        model.train()
        steps, loss_sum, examples = 0, 0.0, 0
        batches = TimedBatches(stream.epoch(run.step_cap))
        for batch in batches:
            with torch.autocast("cuda", torch.bfloat16, enabled=cfg.precision == "bf16" and w.device.type == "cuda"):
                out = compute_loss(model, batch, gather=gather, rank=w.rank, generator=generator)
            check_finite(out.logs["loss"], epoch, steps + 1, w.rank)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            steps, loss_sum, examples = steps + 1, loss_sum + out.logs["loss"], examples + batch_examples(batch)
            w.after_step(epoch, steps, examples, t0)
        train_seconds = time.perf_counter() - t0
        totals = all_reduce_sums({"loss": loss_sum, "steps": steps, "examples": examples,
                                  "data_wait_s": batches.wait_s / w.world}, w.device)
        valid = validate(core, valid_shard, run.schema, cfg.eval_cutoffs, w.device, w.progress, epoch)
        stop = state.end_epoch(epoch, valid[f"recall@{cfg.monitor_k}"], cfg)   # same on every worker
        metrics = epoch_metrics(cfg, state, epoch, totals, valid, steps, t0, train_seconds, stop)
        state.history.append(metrics)
        w.say(f"epoch {epoch}/{cfg.epochs} done: train_loss {metrics['train_loss']:.4f} "
              f"{cfg.monitor_key} {metrics[cfg.monitor_key]:.4f} (best {state.best_metric:.4f} @ epoch "
              f"{state.best_epoch}) {metrics['seconds']:.1f}s {metrics['examples_per_s']:,.0f} examples/s, "
              f"{metrics['data_wait_s']:.1f}s waiting for data")
        report(run, model, optimizer, state, metrics, w)
        if stop:
            w.say(f"early stopping: no {cfg.monitor_key} improvement for {state.bad_epochs} epochs")
            break

    digests = all_gather_object(weight_digest(core))     # DDP must have kept the replicas identical
    return {"history": state.history, "weight_digests": digests, "best_epoch": state.best_epoch,
            "stopped_early": bool(state.history and state.history[-1]["stop"]),
            "resumed_after_epochs": state.resumed_after_epochs,
            "torch_threads": all_gather_object(torch.get_num_threads())}


@dataclass
class Worker:
    """This worker's rank, world size, device, and progress reporter (stall watchdog heartbeats and, on
    rank 0, the progress the driver displays); ``say`` sends a console line to the driver (rank 0)."""

    rank: int
    world: int
    device: torch.device
    progress: ProgressReporter

    @classmethod
    def start(cls, config: dict) -> "Worker":
        _quiet_report_logs()
        ctx = ray.train.get_context()
        w = cls(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(),
                ProgressReporter(config.get("tracker")))
        threads = worker_threads(config["run"].config.torch_threads, ctx.get_local_world_size())
        torch.set_num_threads(threads)
        w.say(f"torch threads per worker: {threads}")
        return w

    def say(self, line: str) -> None:
        if self.rank == 0:
            self.progress.say(line)

    def after_step(self, epoch: int, steps: int, examples: int, t0: float) -> None:
        """Heartbeat + progress (throttled to one message per 2 s): epoch, step, rows of all workers,
        seconds into the epoch."""
        self.progress.beat(stage="train", epoch=epoch, step=steps, rows=examples * self.world,
                           seconds=time.perf_counter() - t0)


def worker_threads(configured: int | None, local_workers: int) -> int:
    """Intra-op threads for one worker: ``configured`` when given, else the CPUs this process may run on
    (``os.sched_getaffinity``) divided by ``local_workers`` (the workers on this node), at least 1.

    Ray starts a task with ``OMP_NUM_THREADS`` = its whole CPUs (1 for ``cpus_per_worker: 1``), so without
    this a lone worker on a 2-core machine computes on one core while Ray Data's tasks mostly wait.
    """
    if configured is not None:
        return configured
    return max(1, len(os.sched_getaffinity(0)) // max(1, local_workers))


def setup(run: ResolvedRun, w: Worker) -> tuple[torch.nn.Module, object, TrainState]:
    """(DDP model, optimizer, TrainState): seeded model from the run's schema and feature tables, the
    restored weights/optimizer/state when resuming, then ``prepare_model`` and the optimizer
    (:func:`twotower.model.optim.build_optimizer`; sparse ID tables get a sparse optimizer)."""
    cfg = run.config
    torch.manual_seed(cfg.seed)       # identical on every rank: initial weights match before DDP broadcasts
    np.random.seed(cfg.seed)
    user_table, item_table = load_feature_tables(run.dataset_dir, run.schema)
    model = TwoTowerModel(run.schema, cfg.model, user_table, item_table)
    state, loaded = restore(run, model, w)
    # feature tables and item_prob are constant buffers: synced once at init, not broadcast every step
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"forward_sync_buffers": False})
    optimizer = build_optimizer(cfg.optimizer, model, cfg.lr, cfg.weight_decay, cfg.sparse_optimizer)
    if loaded is not None and loaded.optimizer_state is not None:
        changed = optimizer_changes(loaded.train_config, cfg)
        if changed:
            w.say(f"not restoring the optimizer state: the checkpoint used {', '.join(changed)}")
        else:
            optimizer.load_state_dict(loaded.optimizer_state)            # moments/step counts ...
            for group in optimizer.param_groups:                          # ... but the decay of this config
                group.update(weight_decay=cfg.weight_decay)               # (lr: set every epoch, lr_at)
    torch.manual_seed(cfg.seed + 7919 * w.rank + state.epoch)          # dropout: differs per rank
    return model, optimizer, state


def restore(run: ResolvedRun, model: TwoTowerModel, w: Worker) -> tuple[TrainState, LoadedCheckpoint | None]:
    """Load weights and TrainState into ``model`` from Ray's latest checkpoint of this run (the worker
    group was restarted after a worker failure: the last epoch every worker reported), which wins
    over ``resume_from``; (fresh TrainState, None) when neither exists."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and run.resume is None:
        return TrainState(), None
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            loaded = load_checkpoint(path)
    else:
        loaded = load_checkpoint(run.resume.path, info=run.resume)
    model.load_state_dict(loaded.model.state_dict())
    state = TrainState.from_checkpoint_meta(loaded.meta)
    if checkpoint is not None:
        state.resumed_after_epochs.append(state.epoch)
        w.say(f"resuming after epoch {state.epoch} from the run's checkpoint after a worker failure "
              f"({os.path.basename(checkpoint.path)})")
    else:
        state.resumed_after_epochs = []        # restarts of this run only, not of the one resumed from
        w.say(f"resuming after epoch {state.epoch} from {run.resume.path}")
    w.progress.beat(force=True, stage="resumed", epoch=state.epoch)
    return state, loaded


def batch_examples(batch: dict[str, torch.Tensor]) -> int:
    """Examples a training batch holds: its rows, or for sequence windows its valid positions."""
    return int(batch["mask"].sum()) if "mask" in batch else len(batch["item_idx"])


def check_finite(loss: float, epoch: int, step: int, rank: int) -> None:
    """Raise FloatingPointError when the training loss is NaN or infinite."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"training loss is {loss} at epoch {epoch} step {step} (rank {rank}); "
                                 f"lower lr or raise temperature")


def epoch_metrics(cfg, state: TrainState, epoch: int, totals: dict, valid: dict, steps: int, t0: float,
                  train_seconds: float, stop: bool) -> dict:
    """The metrics reported for one epoch (see the module docstring)."""
    return {"epoch": epoch, "train_loss": totals["loss"] / max(totals["steps"], 1.0),
            **{f"valid_{k}": v for k, v in valid.items()}, "steps": steps, "seconds": time.perf_counter() - t0,
            "train_seconds": train_seconds,
            "examples_per_s": totals["examples"] / max(train_seconds, 1e-9), "data_wait_s": totals["data_wait_s"],
            "best_epoch": state.best_epoch,
            f"best_{cfg.monitor_key}": state.best_metric, "stop": int(stop),
            CHECKPOINT_SCORE: checkpoint_score(valid[f"recall@{cfg.monitor_k}"], epoch)}


def checkpoint_score(value: float, epoch: int) -> float:
    """The score Ray Train ranks checkpoints by (``checkpoint_score_attribute``): the monitored metric
    minus ``epoch * 1e-12``, so that of equal values the earliest epoch ranks highest, as in
    ``TrainState`` and ``artifacts`` (Ray keeps the later of equal scores, which dropped the earliest
    best checkpoint when several epochs tied). 1e-12 is far below any real difference of a metric
    averaged over the validation users (>= 1 / users)."""
    return value - epoch * 1e-12


def report(run: ResolvedRun, model, optimizer, state: TrainState, metrics: dict, w: Worker) -> None:
    """``ray.train.report`` the epoch's metrics; rank 0 alone writes the checkpoint (model + optimizer +
    TrainState) as ``epoch_NNNN``."""
    epoch = metrics["epoch"]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if w.rank == 0:
            save_checkpoint(model, tmp, train_config=run.config.model_dump(mode="json"), dataset_dir=run.dataset_dir,
                            metrics={k: v for k, v in metrics.items() if k.startswith("valid_")},
                            epoch=epoch, optimizer_state=optimizer.state_dict(),
                            extra={"train_state": dataclasses.asdict(state)})
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch_{epoch:04d}")
    w.progress.beat(force=True, stage="reported", epoch=epoch)


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
    acc = RankingAccumulator(ks, schema.num_items)
    item_embs = core.all_item_embeddings()
    for batch, seen in iter_eval_batches(shard, eval_batch_size(schema.num_items), device=device):
        acc.add(core.rank_scores(batch, item_embs), batch["item_idx"], seen, user_idx=batch["user_idx"])
        if progress is not None:
            progress.beat(stage="validate", epoch=epoch)
    core.train()
    return RankingAccumulator.finalize(all_reduce_sums(acc.sums(), device))

