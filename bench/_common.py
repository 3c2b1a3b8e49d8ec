"""Shared pieces of the bench/ scripts: an in-memory training loop, a memory sampler, machine facts and
the docs/benchmarks.md section writer. Not part of the installed package (benchmarks only)."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

from twotower.data.splits import read_split_examples
from twotower.data.tables import load_feature_tables
from twotower.evaluation.offline import iter_split_batches
from twotower.distributed.config import TrainConfig
from twotower.model.optim import build_optimizer
from twotower.model.batch import as_tensors, shuffled_batches
from twotower.model.loss import compute_loss
from twotower.model.metrics import RankingAccumulator
from twotower.model.schema import DatasetSchema
from twotower.model.twotower import TwoTowerModel

GIB = 1 << 30


# ---------------------------------------------------------------------------------------------- the plain loop
def load_split_tensors(dataset_dir: str | Path, split: str, schema: DatasetSchema) -> dict[str, torch.Tensor]:
    """Every example of ``split`` (cut from the sequences, ``cut_examples``) as model input tensors in memory:
    ids and ``timestamp`` (R,), history (R, N), context (R,), ``weight`` (R,) for a weighted dataset."""
    cols = read_split_examples(dataset_dir, split, schema, with_seen=False)
    if cols is None:
        raise ValueError(f"{dataset_dir}: the {split} split has no examples")
    return as_tensors(cols)


def build_model(dataset_dir: str | Path, cfg: TrainConfig) -> tuple[TwoTowerModel, DatasetSchema]:
    """The model a Ray Train worker builds (same seed, schema, feature tables and config)."""
    torch.manual_seed(cfg.seed)
    schema = DatasetSchema.load(dataset_dir)
    user_table, item_table = load_feature_tables(dataset_dir)
    return TwoTowerModel(schema, cfg.model, user_table, item_table), schema


@dataclass
class PlainRun:
    """Outcome of :func:`plain_train`: examples, training seconds (excluding evaluation callbacks)."""

    examples: int = 0
    seconds: float = 0.0
    steps: int = 0
    epochs: int = 0
    history: list[dict] = field(default_factory=list)

    @property
    def examples_per_s(self) -> float:
        return self.examples / max(self.seconds, 1e-9)


def plain_train(model: TwoTowerModel, cfg: TrainConfig, data: dict[str, torch.Tensor], *, max_steps: int | None = None,
                epochs: int = 1, on_epoch=None, seed: int = 0, every: int = 0, on_steps=None,
                max_steps_per_epoch: int | None = None) -> PlainRun:
    """Single-process PyTorch loop over in-memory tensors: per epoch a random permutation, batches of
    ``cfg.batch_size`` (last partial batch dropped, as in Ray Train), ``compute_loss`` + the configured
    optimizer: the same model, loss and batch as a Ray Train worker, without Ray Data or DDP.

    ``max_steps`` caps the run's steps, ``max_steps_per_epoch`` each epoch's (then the next epoch draws a
    new permutation). ``on_epoch(epoch, run) -> bool`` is called after every epoch outside the timed section; returning
    True stops training; so does ``on_steps(run) -> bool``, called every ``every`` steps (also untimed).
    Returns a :class:`PlainRun` (seconds = training time only).
    """
    optimizer = build_optimizer(cfg.optimizer, model, cfg.lr, cfg.weight_decay, cfg.sparse_optimizer)
    generator = torch.Generator().manual_seed(seed)
    b = cfg.batch_size
    run = PlainRun()
    model.train()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        for group in optimizer.param_groups:               # the step schedule, as the Ray Train loop
            group["lr"] = cfg.lr_at(epoch)
        for batch in shuffled_batches(data, b, generator, max_steps_per_epoch):
            out = compute_loss(model, batch, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            run.steps, run.examples = run.steps + 1, run.examples + b
            if max_steps and run.steps >= max_steps:
                break
            if on_steps is not None and every and run.steps % every == 0:
                run.seconds += time.perf_counter() - t0
                if on_steps(run):
                    return run
                t0 = time.perf_counter()
        run.seconds += time.perf_counter() - t0
        run.epochs = epoch
        if (on_epoch is not None and on_epoch(epoch, run)) or (max_steps and run.steps >= max_steps):
            break
    return run


class TestQueries:
    """A split in memory: model input tensors and seen items per batch; sampled HR@10 and Recall@10 of scores."""

    def __init__(self, ds: Path, schema, split: str = "test"):
        self.schema, self.split = schema, split
        self.batches = [(as_tensors(b), seen) for b, seen in iter_split_batches(ds, split, schema, 4096)]

    def metrics(self, scores: list[torch.Tensor]) -> dict:
        """``sampled_hr@10`` and full-ranking ``recall@10`` (and ``ndcg@10``) of per-batch score matrices
        (B, num_items) in twotower's item index space."""
        acc = RankingAccumulator([10], self.schema.num_items, sampled_negatives=100, sampled_k=10)
        for s, (batch, seen) in zip(scores, self.batches):
            acc.add(s, batch["item_idx"], seen, user_idx=batch["user_idx"])
        return RankingAccumulator.finalize(acc.sums())

    @torch.no_grad()
    def model_metrics(self, model) -> dict:
        model.eval()
        items = model.all_item_embeddings()
        out = self.metrics([model.rank_scores(b, items) for b, _ in self.batches])
        model.train()
        return out

    def factor_metrics(self, user_factors, item_factors) -> dict:
        """Metrics of a matrix factorisation: score = user_factors[u] . item_factors[i] (numpy (U, F), (I, F))."""
        users, items = torch.from_numpy(user_factors), torch.from_numpy(item_factors)
        return self.metrics([users[b["user_idx"]] @ items.T for b, _ in self.batches])


def epoch_report_times(fit_wall_s: float, epoch_seconds: list[float]) -> list[float]:
    """Seconds since the start of a ``fit`` at which each epoch's checkpoint was reported: the fit's wall
    time minus the seconds of the later epochs (the teardown after the last report is counted in every
    epoch's time, so the figures are slightly pessimistic)."""
    return [fit_wall_s - sum(epoch_seconds[i + 1:]) for i in range(len(epoch_seconds))]


# ---------------------------------------------------------------------------------------------- memory
class MemorySampler:
    """Samples memory every ``interval_s`` seconds while active (a daemon thread).

    Records the peak resident set size (bytes) of this process and its descendants (a local Ray started
    by this process or by a job it runs: GCS, raylet, dashboard, workers), keyed by pid with its
    last busy title, the peak of each one's private memory (RSS minus shared pages: a Ray worker's RSS
    also counts the object-store pages it has mapped, which grow with the blocks it has touched, not
    with what it holds), and the peak of the system's used memory (``total - available``) above the
    level when sampling started (``system_peak_bytes``): the figure to compare with a RAM budget, since
    per-process RSS double-counts shared object-store pages.
    """

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.peak: dict[int, tuple[str, int]] = {}
        self.private: dict[int, int] = {}
        self._stop, self._thread = threading.Event(), None
        vm = psutil.virtual_memory()
        self.baseline = vm.total - vm.available
        self._born_here: set[int] = set()
        self.system_peak_bytes = 0
        self._ticks, self._procs = 0, {}
        self.cpu_first: dict[int, float] = {}      # user + system CPU seconds at first sight / latest sample
        self.cpu_last: dict[int, float] = {}

    def __enter__(self) -> "MemorySampler":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        """Memory of the tracked processes; the process table is re-scanned every 4th sample only
        (a full scan costs ~50 ms of Python, which would slow the loop being measured)."""
        vm = psutil.virtual_memory()
        self.system_peak_bytes = max(self.system_peak_bytes, vm.total - vm.available - self.baseline)
        if self._ticks % 4 == 0:
            self._scan()
        self._ticks += 1
        for pid, proc in list(self._procs.items()):
            try:
                mem = proc.memory_info()
                rss = mem.rss
                cpu = proc.cpu_times()
                self.cpu_first.setdefault(pid, 0.0 if pid in self._born_here else cpu.user + cpu.system)
                self.cpu_last[pid] = cpu.user + cpu.system
                self.private[pid] = max(self.private.get(pid, 0), mem.rss - mem.shared)
                title = self._title_of(pid, proc)
            except psutil.Error:
                self._procs.pop(pid, None)
                continue
            old_title, old = self.peak.get(pid, (title, 0))
            self.peak[pid] = (old_title if title == "ray::IDLE" else title, max(old, rss))

    def _scan(self) -> None:
        me = os.getpid()
        try:
            mine = {c.pid for c in psutil.Process(me).children(recursive=True)}
        except psutil.Error:
            mine = set()
        for p in psutil.process_iter(["pid"]):
            if p.info["pid"] == me or p.info["pid"] in mine:
                if p.info["pid"] not in self._procs and p.info["pid"] != me and self._ticks > 0:
                    self._born_here.add(p.info["pid"])      # started during sampling: all its CPU counts
                self._procs.setdefault(p.info["pid"], p)

    def _title_of(self, pid: int, proc: psutil.Process) -> str:
        if pid == os.getpid():
            return "driver (this script)"
        return _title(" ".join(proc.cmdline()))

    def private_by_role(self) -> list[tuple[str, int, int]]:
        """(role, number of processes, max peak private bytes (RSS - shared) over them), largest first."""
        roles: dict[str, list[int]] = {}
        for pid, (title, _) in self.peak.items():
            roles.setdefault(title, []).append(self.private.get(pid, 0))
        return sorted(((t, len(v), max(v)) for t, v in roles.items()), key=lambda r: -r[2])

    def cpu_by_role(self) -> list[tuple[str, int, float]]:
        """(role, number of processes, CPU seconds (user + system) they used while sampled), largest first.
        A process started while sampling counts from its start; one sampled every 0.5 s misses at most
        its last half second."""
        roles: dict[str, list[float]] = {}
        for pid, (title, _) in self.peak.items():
            roles.setdefault(title, []).append(self.cpu_last.get(pid, 0.0) - self.cpu_first.get(pid, 0.0))
        return sorted(((t, len(v), sum(v)) for t, v in roles.items()), key=lambda r: -r[2])

    def by_role(self) -> list[tuple[str, int, int]]:
        """(role, number of processes, max peak RSS bytes over them), largest first."""
        roles: dict[str, list[int]] = {}
        for title, rss in self.peak.values():
            roles.setdefault(title, []).append(rss)
        return sorted(((t, len(v), max(v)) for t, v in roles.items()), key=lambda r: -r[2])


def _title(cmd: str) -> str:
    if "twotower.jobs.cli" in cmd:
        return "twotower " + cmd.split("twotower.jobs.cli")[1].split()[0] + " (job driver)"
    if cmd.startswith("ray::"):
        return cmd.split()[0]
    for s, name in (("/raylet", "raylet"), ("gcs_server", "gcs_server"), ("dashboard/agent.py", "dashboard agent"),
                    ("dashboard.py", "dashboard"), ("runtime_env/agent", "runtime env agent")):
        if s in cmd:
            return name
    return cmd[:40]


def self_peak_rss_bytes() -> int:
    """Peak RSS of this process so far (``getrusage``; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------------- reporting
def machine_line() -> str:
    """'2 CPU cores, 24.0 GiB RAM, no GPU; Linux x86_64; torch 2.13.0, ray 2.60.0; 2026-11-22' style."""
    import ray
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPU cores, {psutil.virtual_memory().total / GIB:.1f} GiB RAM, {gpu}; "
            f"{platform.system()} {platform.machine()}; python {platform.python_version()}, torch {torch.__version__}, "
            f"ray {ray.__version__}; {_dt.date.today().isoformat()}; load average at start "
            f"{os.getloadavg()[0]:.1f}")


def write_docs_section(path: str | Path, name: str, markdown: str) -> None:
    """Replace the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in ``path`` (appended
    with the markers when absent), so the script regenerates its own table in docs/benchmarks.md."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def fmt_bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / (1 << 20):.0f} MiB"
