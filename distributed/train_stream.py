"""A worker's training batches over a run: successive passes of its shard cut into epochs
(:class:`TrainStream`), optionally replayed from memory after the first pass (:class:`~twotower.
distributed.example_cache.ExampleCache`), and timed for the ``data_wait_s`` metric
(:class:`TimedBatches`). The pipeline behind a pass is :mod:`twotower.distributed.data`'s.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator

import torch

from twotower.distributed.data import iter_train_batches, pass_seed
from twotower.distributed.example_cache import GIB, ExampleCache


class TrainStream:
    """This worker's training batches as one stream over successive passes of its shard, cut into epochs.

    ``epoch(cap)`` yields the next at most ``cap`` batches of the current pass (:func:`iter_train_batches`,
    shuffle seeded by the pass number). An epoch ends after ``cap`` steps or at the end of the pass,
    whichever comes first; the next epoch continues the pass where the last one stopped, and a new
    pass (Ray Data re-executes the pipeline: files reshuffled, new shuffle seed) starts only when the
    last one is used up. So with ``max_steps_per_epoch`` shorter than a pass, successive epochs
    (validation periods) see successive examples instead of re-reading the start of the data, and the
    pipeline is not restarted for every epoch; with no cap every epoch is one pass.

    ``first_pass``: the number of the first pass (1; after a resume, the epochs done + 1, a new pass
    from the start of the data). Every worker of a run takes the same number of batches per pass
    (``equal=True`` shards, ``drop_last``), so epochs end at the same step on every worker.

    ``cache``: an empty :class:`ExampleCache` to fill during the first pass; once that pass ends, every
    later pass replays the cached rows in a fresh permutation (seeded by seed, pass number and rank)
    instead of re-running the pipeline: the same number of batches per pass, so the steps stay equal
    across workers. If the cache goes over its budget it is dropped and every pass streams. ``say``
    receives a line when the cache is sealed or dropped.
    """

    def __init__(self, shard, batch_size: int, *, seed: int, rank: int, first_pass: int = 1,
                 device: torch.device | str = "cpu", windows: bool = False, cache: ExampleCache | None = None,
                 say: Callable[[str], None] = lambda line: None):
        self._make = lambda n: iter_train_batches(shard, batch_size, seed=seed, pass_number=n, rank=rank,
                                                  device=device, windows=windows)
        self._replay = lambda n: self.cache.batches(batch_size, pass_seed(seed, n, rank), device)
        self.next_pass, self._batches, self.cache, self._say = first_pass, None, cache, say

    def epoch(self, cap: int) -> Iterator[dict[str, torch.Tensor]]:
        """The next epoch's batches: at most ``cap``, never crossing the end of a pass."""
        taken, fresh = 0, False
        while taken < cap:
            if self._batches is None:
                self._batches, self.next_pass, fresh = iter(self._pass(self.next_pass)), self.next_pass + 1, True
            try:
                batch = next(self._batches)
            except StopIteration:
                self._batches = None
                if taken or fresh:           # the pass ended during this epoch (or held no full batch)
                    return
                continue                     # the last epoch ended exactly at the end of a pass
            taken, fresh = taken + 1, False
            yield batch

    def _pass(self, number: int) -> Iterator[dict[str, torch.Tensor]]:
        """Pass ``number``: replayed from the cache once it is sealed, else streamed (filling the cache)."""
        if self.cache is not None and self.cache.sealed:
            yield from self._replay(number)
            return
        for batch in self._make(number):
            if self.cache is not None and not self.cache.add(batch):
                self._say(f"train examples not cached: this worker's share is over train_cache_gib "
                          f"({self.cache.max_bytes / GIB:.2f} GiB); every pass streams from Ray Data")
                self.cache = None
            yield batch
        if self.cache is not None:
            self.cache.seal()
            self._say(f"train examples cached after pass {number}: {self.cache.rows:,} rows, "
                      f"{self.cache.nbytes / GIB:.2f} GiB per worker; later passes shuffle them in memory")


class TimedBatches:
    """Iterator over ``batches`` that adds up ``wait_s``: the seconds the caller spent blocked in
    ``next()``, i.e. waiting for the input pipeline (Ray Data) instead of training. Near 0 when the
    pipeline keeps ahead of the step; the epoch's ``data_wait_s`` metric. ``clock``: seconds, monotonic."""

    def __init__(self, batches, clock=time.perf_counter):
        self._batches, self._clock, self.wait_s = iter(batches), clock, 0.0

    def __iter__(self) -> "TimedBatches":
        return self

    def __next__(self):
        start = self._clock()
        try:
            return next(self._batches)
        finally:
            self.wait_s += self._clock() - start
