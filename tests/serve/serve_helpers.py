"""Helpers of the serving tests (imported by conftest.py and the test modules): briefly trained ML-100K
checkpoints with their indexes, expected answers computed offline, and ranking comparison.

Models are trained in-process (no Ray Train) for ``TRAIN_STEPS`` steps: enough for the trilinear
context projection to move away from the identity so that two contexts rank items differently.
Indexes are built with :func:`twotower.index.build_local_index` (exact ``Flat``) over items 1..n.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

TRAIN_STEPS = 30
BATCH = 256


@dataclass
class Artifacts:
    """A checkpoint, its index(es) and the in-process pieces to compute expected answers."""

    mode: str
    dataset: Path
    checkpoint: Path
    index: Path
    index_v2: Path | None
    model: object


def train_model(dataset: Path, mode: str, steps: int = TRAIN_STEPS, seed: int = 0):
    """A small TwoTowerModel (D=32) trained ``steps`` steps of in-batch softmax on ML-100K train rows."""
    from twotower.data.splits import read_split_examples
    from twotower.data.tables import load_feature_tables
    from twotower.model.batch import to_tensors
    from twotower.model.config import ModelConfig
    from twotower.model.loss import compute_loss
    from twotower.model.optim import build_optimizer
    from twotower.model.schema import DatasetSchema
    from twotower.model.twotower import TwoTowerModel

    schema = DatasetSchema.load(dataset)
    torch.manual_seed(seed)
    cfg = ModelConfig(context_mode=mode, final_embedding_dim=32, hidden_dims=[64], dropout=0.0, rerank_depth=30)
    model = TwoTowerModel(schema, cfg, *load_feature_tables(dataset))
    cols = read_split_examples(dataset, "train", schema)
    opt = build_optimizer("adam", model, lr=3e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        rows = rng.integers(0, len(cols["item_idx"]), BATCH)
        loss = compute_loss(model, to_tensors({k: v[rows] for k, v in cols.items()}, schema)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def make_artifacts(dataset: Path, out: Path, mode: str, num_shards: int, with_v2: bool,
                   steps: int = TRAIN_STEPS) -> Artifacts:
    """Checkpoint + Flat index (``num_shards``) [+ a v2 index without the 100 most popular items]."""
    from twotower.index import build_local_index, checkpoint_record
    from twotower.model.checkpoint import read_checkpoint, save_checkpoint

    model = train_model(dataset, mode, steps)
    ckpt = save_checkpoint(model, out / "checkpoint", dataset_dir=str(dataset))
    record = checkpoint_record(read_checkpoint(ckpt))
    items = pq.read_table(dataset / "items.parquet", columns=["item_idx", "item_id", "train_count"])
    idx = items["item_idx"].to_numpy()[1:].astype(np.int64)
    ids = items["item_id"].to_pylist()[1:]
    emb = model.all_item_embeddings().numpy()[idx]
    build_local_index(out / "index", emb, idx, ids, num_shards=num_shards, checkpoint=record)
    v2 = None
    if with_v2:
        keep = np.argsort(-items["train_count"].to_numpy()[1:], kind="stable")[100:]
        keep.sort()
        v2 = out / "index-v2"
        build_local_index(v2, emb[keep], idx[keep], [ids[i] for i in keep], num_shards=num_shards, checkpoint=record)
    return Artifacts(mode, Path(dataset), Path(ckpt), out / "index", v2, model)


def make_feature_artifacts(out: Path, mode: str, num_shards: int = 1, steps: int = 60) -> Artifacts:
    """The planted every-kind dataset of ``feature_data`` written to ``out/dataset``, a model of ``mode``
    trained ``steps`` in-process steps on its planted problem, its checkpoint and a Flat index."""
    import feature_data as fd
    from twotower.index import build_local_index, checkpoint_record
    from twotower.model.checkpoint import read_checkpoint, save_checkpoint
    from twotower.model.config import ModelConfig
    from twotower.model.twotower import TwoTowerModel

    schema, users, items = fd.write_dataset(out / "dataset")
    torch.manual_seed(0)
    cfg = ModelConfig(context_mode=mode, user_embedding_dim=8, item_embedding_dim=8, feature_embedding_dim=8,
                      final_embedding_dim=16, hidden_dims=[32], dropout=0.0, rerank_depth=20, temperature=0.1)
    model = fd.train(TwoTowerModel(schema, cfg, users, items), fd.ITEM_GROUP, steps)
    ckpt = save_checkpoint(model.eval(), out / "checkpoint", dataset_dir=str(out / "dataset"))
    idx = np.arange(1, schema.num_items)
    emb = model.all_item_embeddings().numpy()[idx]
    build_local_index(out / "index", emb, idx, [f"i{i}" for i in idx], num_shards=num_shards,
                      checkpoint=checkpoint_record(read_checkpoint(ckpt)))
    return Artifacts(mode, out / "dataset", Path(ckpt), out / "index", None, model)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Apps:
    """The two applications the HTTP tests talk to.

    ``user_tower`` (2-shard index) and ``scoring_layer`` (1 shard, untrained model): deployed
    declaratively in one config (the ``serve deploy`` path; ``config``), the swap test re-deploys it
    with ``with_index``. ``trilinear``: ``serve.run`` with a 1-shard index.
    """

    user_tower_url: str
    trilinear_url: str
    scoring_layer_url: str
    user_tower: Artifacts
    trilinear: Artifacts
    scoring_layer: Artifacts
    config: dict
    dashboard_url: str


class Offline:
    """Expected answers computed in this process: the pieces of the offline ``Recommender`` (request plan,
    the checkpoint's encoder, the whole index) and ``ShardedIndex.search`` called directly (no Serve, no
    fan-out code, not the ``recommend`` pipeline). ``rec``: the Recommender itself."""

    def __init__(self, art: Artifacts, index: Path | None = None):
        from twotower.serve import Recommender

        self.rec = Recommender.load(art.checkpoint, index or art.index, art.dataset)
        self.state, self.encoder, self.index = self.rec.state, self.rec.encoder, self.rec.index
        self.model_version = self.rec.model_version

    def query(self, body: dict):
        """(plan, query vector float32 (D,) or None) of a request body."""
        from twotower.serve.recommender import plan_recommend
        from twotower.serve.schema import RecommendRequest

        plan = plan_recommend(RecommendRequest.model_validate(body), self.state)
        return plan, None if plan.query is None else self.encoder.encode([plan.query])[0]

    def topk(self, body: dict) -> tuple[list[str], np.ndarray]:
        """(item ids, scores) that ``ShardedIndex.search`` gives for the request's query vector."""
        plan, q = self.query(body)
        scores, items = self.index.search(q[None, :], plan.k, exclude=[plan.exclude])
        keep = items[0] > 0
        return [str(i) for i in self.index.item_ids(items[0][keep])], scores[0][keep]


def assert_same_ranking(got: dict, want_ids: list[str], want_scores: np.ndarray, tol: float = 1e-4) -> None:
    """HTTP items == offline items, allowing only swaps between items whose offline scores tie within
    ``tol`` (the served query was encoded in a batch of another size: float rounding may differ)."""
    ids = [it["item_id"] for it in got["items"]]
    scores = np.array([it["score"] for it in got["items"]], np.float32)
    assert len(ids) == len(want_ids), (len(ids), len(want_ids))
    np.testing.assert_allclose(scores, want_scores, atol=tol)
    for p, (a, b) in enumerate(zip(ids, want_ids)):
        if a != b:
            near = np.abs(want_scores - want_scores[p]) <= tol
            assert a in [want_ids[j] for j in np.flatnonzero(near)], f"position {p}: {a} vs {b}"


def wait_for_cli_ready(proc, marker: str) -> list[str]:
    """Read a ``twotower serve`` subprocess's output until it prints ``marker`` (ready) or exits;
    asserts it got ready (the failure message holds the last 30 lines). Returns the lines read."""
    lines = []
    for line in proc.stdout:                                  # blocks until the CLI reports ready
        lines.append(line)
        if marker in line or proc.poll() is not None:
            break
    assert any(marker in line for line in lines), "".join(lines[-30:])
    return lines


@dataclass
class CliApp:
    """A ``python -m twotower.jobs.serve`` subprocess serving ``app_name`` at ``url``; ``lines``: its output
    read so far."""

    proc: object
    url: str
    app_name: str
    lines: list

    def stop(self, timeout_s: float = 120) -> int | None:
        """SIGTERM (if still running) and wait; returns the exit code (None when it had to be killed)."""
        import signal
        import subprocess
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return None
        return self.proc.returncode


def start_cli(args: list[str], marker: str, url: str, app_name: str) -> CliApp:
    """Start ``python -m twotower.jobs.serve ARGS`` and wait until it prints ``marker`` (ready)."""
    import os
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "twotower.jobs.serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    try:
        lines = wait_for_cli_ready(proc, marker)
    except BaseException:
        proc.kill()
        raise
    import threading
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()   # keep the pipe drained
    return CliApp(proc, url, app_name, lines)
