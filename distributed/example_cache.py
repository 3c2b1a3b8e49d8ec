"""One worker's training examples held in memory after the first pass (``TrainConfig.train_cache_gib``).

Every pass over the train split re-runs the Ray Data pipeline (read the sequence files, cut the
examples, split them across workers, shuffle them in a local buffer). On a small machine that costs
CPU beside the step: on 2 cores, ~13 CPU s per ML-1M epoch, which takes the second core from a
2-thread step (docs/benchmarks.md). When a worker's share of the examples fits in memory, its
first pass fills an :class:`ExampleCache` and every later pass is drawn from memory, as the plain
single-process loop does: a fresh random permutation of the cached rows per pass, cut into batches.

The cache holds exactly the rows of the first pass's full batches, so every later pass has the same
number of batches as the first; with ``equal=True`` shards and ``drop_last`` (``twotower.distributed.
data``) every worker then still takes the same number of steps per pass, which DDP needs. A worker
keeps the examples of its first pass for the whole run (``streaming_split`` assigns blocks to
workers dynamically, so a streamed pass would give it others); within them the shuffle is global,
where the streamed pass only mixes a local buffer.

Pure PyTorch; no Ray.
"""
from __future__ import annotations

from typing import Iterator

import torch

from twotower.model.batch import shuffled_batches

GIB = 1 << 30


def batch_nbytes(batch: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors of one batch (element size x elements, summed over columns)."""
    return sum(v.element_size() * v.nelement() for v in batch.values())


class ExampleCache:
    """The rows of one pass's batches, kept on the host, replayed as shuffled batches in later passes.

    Fill it with :meth:`add` for every batch of a pass (dicts of tensors whose first dimension is the
    batch, B rows: ``user_idx`` (B,) int64, ``history`` (B, N) int64, ... as ``iter_train_batches``
    yields them), then :meth:`seal` at the end of the pass. :meth:`add` returns False, and the cache
    drops what it held, when the rows would exceed ``max_bytes`` or when the first batch times
    ``expected_batches`` already does (so a large dataset is not copied only to be dropped); the
    caller then keeps streaming.

    Memory: up to ``max_bytes`` while filling; :meth:`seal` concatenates one column at a time, so at
    most the largest column is held twice for a moment.

    Args:
        max_bytes: the most the cached rows may take, bytes (> 0).
        expected_batches: batches a pass is expected to hold (for the early check; None: no check).
    """

    def __init__(self, max_bytes: int, expected_batches: int | None = None):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes, self.expected_batches = max_bytes, expected_batches
        self.nbytes, self.rows = 0, 0
        self._parts: list[dict[str, torch.Tensor]] | None = []
        self.columns: dict[str, torch.Tensor] | None = None       # set by seal()

    @property
    def sealed(self) -> bool:
        return self.columns is not None

    def add(self, batch: dict[str, torch.Tensor]) -> bool:
        """Keep ``batch``'s rows (copied to the host when on a GPU); False when the cache is over its
        budget (it is then emptied and stays unusable)."""
        if self._parts is None or self.sealed:
            raise RuntimeError("add() after the cache was sealed or dropped")
        size = batch_nbytes(batch)
        expected = size * (self.expected_batches or 0)
        if self.nbytes + size > self.max_bytes or (not self._parts and expected > self.max_bytes):
            self._parts, self.nbytes, self.rows = None, 0, 0
            return False
        self._parts.append({k: v.detach().to("cpu") for k, v in batch.items()})
        self.nbytes, self.rows = self.nbytes + size, self.rows + len(next(iter(batch.values())))
        return True

    def seal(self) -> None:
        """End of the pass: concatenate the kept batches into one tensor per column ((R, ...), R rows)."""
        if self._parts is None:
            raise RuntimeError("seal() after the cache was dropped")
        parts, self._parts, columns = self._parts, [], {}
        for name in list(parts[0]) if parts else []:
            columns[name] = torch.cat([p.pop(name) for p in parts])
        self.columns = columns

    def batches(self, batch_size: int, seed: int, device: torch.device | str = "cpu"
                ) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over the cached rows: ``R // batch_size`` batches of ``batch_size`` rows, the rows in
        the order of ``torch.randperm(R)`` drawn from a generator seeded with ``seed``, moved to
        ``device``. With ``batch_size`` the first pass's, that is exactly the first pass's batch count.

        Raises:
            RuntimeError: the cache is not sealed.
        """
        if self.columns is None:
            raise RuntimeError("batches() before seal()")
        yield from shuffled_batches(self.columns, batch_size, torch.Generator().manual_seed(seed), device=device)
