"""The training job's typed configuration: loadable from YAML, overridable with ``key=value`` strings."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from twotower.model.config import ModelConfig


class ConfigError(ValueError):
    """A config file or override that does not parse or does not validate; the message names the key."""


class TrainConfig(BaseModel):
    """Everything a training run needs besides the dataset directory.

    Model and loss hyperparameters live in ``model`` (:class:`ModelConfig`); overrides may name them
    without the ``model.`` prefix (``temperature=0.1``).
    """

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig)
    examples: Literal["event", "sequence"] = Field(
        "event", description="event: one example per train interaction (history -> item); sequence: windows of "
                             "max_sequence_length train interactions of one user, a query at every position "
                             "(history_pooling transformer, softmax loss, user_tower or trilinear)")
    batch_size: int = Field(1024, ge=2, description="per-worker batch size (examples: sequence: windows)")
    epochs: int = Field(20, ge=1)
    lr: float = Field(3e-3, gt=0.0)
    lr_decay_epochs: list[int] = Field(
        default_factory=list, description="step schedule: after each of these epochs the learning rate is "
                                          "multiplied by lr_decay_factor (see lr_at)")
    lr_decay_factor: float = Field(0.1, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0, description="not applied to sparse ID tables")
    optimizer: Literal["adam", "adamw", "sgd", "adagrad"] = "adam"
    sparse_optimizer: Literal["auto", "rowwise_adagrad"] = Field(
        "auto", description="optimizer of sparse ID tables: auto = sparse counterpart of `optimizer` "
                            "(adam -> SparseAdam); rowwise_adagrad = one accumulator per row (10M+ ids)")
    patience: int = Field(3, ge=0, description="epochs without valid Recall@k improvement before stopping; 0 = off")
    min_delta: float = Field(0.0, ge=0.0, description="early stopping: a gain of valid Recall@k of at most this "
                                                      "does not count as an improvement (the best checkpoint "
                                                      "still follows the best value)")
    monitor_k: int = Field(10, ge=1, description="k of the validation Recall@k used for early stopping")
    eval_ks: list[int] = Field(default_factory=lambda: [10, 20, 50])
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    torch_threads: int | None = Field(
        None, ge=1, description="intra-op threads of each worker's torch (torch.set_num_threads); null = the CPUs "
                                "this process may run on divided by the workers on its node. Ray sets "
                                "OMP_NUM_THREADS to a task's whole CPUs (1 for cpus_per_worker 1), which would "
                                "leave the other cores idle")
    use_gpu: bool = False
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: the training forward and loss under torch.autocast(cuda, bfloat16) (weights, "
                            "optimizer and gradients stay float32); needs use_gpu")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement of the training workers across nodes (ScalingConfig.placement_strategy): "
                            "PACK fills as few nodes as possible, SPREAD uses as many as possible, STRICT_PACK "
                            "needs one node, STRICT_SPREAD one worker per node (else the run waits for nodes)")
    gather_negatives: bool = Field(False, description="in-batch negatives from all workers (all_gather with grad)")
    seed: int = 0
    storage_path: str = Field("runs", description="local path or pyarrow filesystem URI (s3://...) holding the run "
                                                  "directories (checkpoints and artifacts)")
    run_name: str | None = None
    resume_from: str | None = Field(None, description="checkpoint directory to resume from")
    max_failures: int = Field(0, ge=-1, description="worker-group restarts (from the latest checkpoint) before the run fails; -1 = unlimited")
    checkpoints_to_keep: int | None = Field(2, ge=1, description="epoch checkpoints kept, best by the monitored "
                                            "metric (Ray also keeps the latest); null keeps every epoch")
    stall_timeout_s: float = Field(600.0, gt=0.0, description="fail if no training step, validation batch or report happens for this many seconds (start-up included)")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap steps per epoch: smoke runs, or validation "
                                            "and checkpoints every N steps on large data. A capped epoch continues "
                                            "the pass over the train split where the previous one stopped "
                                            "(distributed.train_stream.TrainStream); an epoch never crosses a pass")
    train_cache_gib: float = Field(
        1.0, ge=0.0, description="hold each worker's train examples in memory after the first pass when they take "
                                 "at most this many GiB (checked from the first batch and while filling); later "
                                 "passes shuffle them in memory instead of re-running the Ray Data pipeline "
                                 "(distributed.example_cache). 0 = stream every pass (no cache)")
    ray_dashboard: bool = Field(
        False, description="a local Ray runtime that training starts itself: also start Ray's dashboard on "
                            "127.0.0.1:8265 (and with it Ray Train's placement-group cleaner, which needs the "
                            "dashboard's state API). Off by default: the dashboard's dozen processes cost 2-4 s "
                            "of start-up and wake-ups that slow the step on a small machine. A cluster joined "
                            "through RAY_ADDRESS is used as it is")
    skip_bad_files: bool = Field(False, description="leave out input parquet files whose footer or columns are bad (logged, listed in summary.json) instead of failing")

    @model_validator(mode="after")
    def _bf16_needs_a_gpu(self) -> "TrainConfig":
        if self.precision == "bf16" and not self.use_gpu:
            raise ValueError("precision: bf16 is mixed precision on CUDA and needs use_gpu: true (on CPU train "
                             "with precision: fp32)")
        return self

    def on_gpus(self) -> tuple["TrainConfig", str | None]:
        """The configuration as it runs on GPUs, and the line saying what was switched (None if nothing).

        With ``use_gpu`` and several workers, DDP all-reduces gradients with NCCL, which has no sparse
        all-reduce: sparse ID tables (``sparse_id_embeddings``, the default) would fail at the first
        backward. They are switched to dense tables (dense gradients, the dense counterpart of the
        optimizer). One GPU worker (no all-reduce) and CPU runs (gloo all-reduces sparse tensors) keep
        them.
        """
        if not (self.use_gpu and self.num_workers > 1 and self.model.sparse_id_embeddings):
            return self, None
        switched = self.model_copy(update={"model": self.model.model_copy(update={"sparse_id_embeddings": False})})
        return switched, (f"use_gpu with {self.num_workers} workers: NCCL cannot all-reduce sparse gradients, so "
                          "sparse_id_embeddings is switched off (dense user/item ID tables and optimizer)")

    def lr_at(self, epoch: int) -> float:
        """Learning rate of ``epoch`` (1-based): ``lr * lr_decay_factor ** m``, m = the entries of
        ``lr_decay_epochs`` below ``epoch`` (``[60]``: epochs 1-60 at ``lr``, 61 on at ``lr * factor``;
        torch's ``MultiStepLR`` with milestones counted in epochs). A resumed run gets the same value."""
        return self.lr * self.lr_decay_factor ** sum(1 for e in self.lr_decay_epochs if e < epoch)

    @model_validator(mode="after")
    def _sequence_examples_need_the_encoder(self) -> "TrainConfig":
        m = self.model
        if self.examples == "sequence" and (m.history_pooling != "transformer" or m.loss == "bce"
                                            or m.context_mode.value == "scoring_layer"):
            raise ValueError(f"examples: sequence trains history_pooling: transformer with loss: softmax or "
                             f"full_softmax in user_tower or trilinear mode; got history_pooling {m.history_pooling}, loss {m.loss}, "
                             f"context_mode {m.context_mode.value}")
        return self

    @property
    def eval_cutoffs(self) -> list[int]:
        """Cut-offs evaluated on the validation split: ``eval_ks`` plus ``monitor_k``, sorted."""
        return sorted(set(self.eval_ks) | {self.monitor_k})

    @property
    def monitor_key(self) -> str:
        """Reported metric that early stopping and checkpoint ranking use, e.g. ``valid_recall@10``."""
        return f"valid_recall@{self.monitor_k}"

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, overrides: list[str] | None = None,
                  flags: dict[str, Any] | None = None) -> "TrainConfig":
        """Load ``path`` (YAML mapping; None = defaults), apply ``key=value`` overrides, then ``flags``
        (top-level keys, e.g. from the command line's ``--epochs``); validated once.

        Values are parsed as YAML (``hidden_dims=[128,64]``, ``use_gpu=true``). Keys of
        :class:`ModelConfig` may be given bare or as ``model.key``.

        Raises:
            ConfigError: unreadable YAML, unknown key, or a value failing validation (names the key).
        """
        data: dict[str, Any] = {}
        if path is not None:
            try:
                data = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as e:
                raise ConfigError(f"{path}: cannot read config: {e}") from e
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
        data = {**data, "model": dict(data.get("model") or {})}
        for item in overrides or []:
            key, value = _parse_override(item)
            if key.startswith("model."):
                data["model"][key[len("model."):]] = value
            elif key in cls.model_fields:
                data[key] = value
            elif key in ModelConfig.model_fields:
                data["model"][key] = value
            else:
                raise ConfigError(f"unknown config key {key!r}")
        return cls.validated({**data, **(flags or {})})

    @classmethod
    def validated(cls, data: dict[str, Any]) -> "TrainConfig":
        """``model_validate`` with the first pydantic error as a ConfigError naming the key."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            if first["type"] == "value_error":      # a check across keys (model validators): its message names them
                raise ConfigError(f"config{f' key {loc!r}' if loc else ''}: {first['msg']}") from e
            raise ConfigError(f"config key {loc!r}: {first['msg']} (got {first.get('input')!r})") from e

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _parse_override(item: str) -> tuple[str, Any]:
    """``"key=value"`` -> (key, YAML-parsed value). Raises ConfigError."""
    key, sep, raw = item.partition("=")
    key = key.strip().removeprefix("--")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {e}") from e
