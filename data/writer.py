"""Writing sequences from in-memory interactions (tests and tools that build a small dataset by hand;
the prepare job writes its files itself, :mod:`twotower.distributed.prepare`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class SequenceWriter:
    """Writes ``sequences/part-NNNNN.parquet`` (:mod:`twotower.data.sequences`), one file per :meth:`write`
    of complete users, and counts train interactions per item.

    Attributes:
        train_count: int64 (num_items,), train interactions per item index, accumulated over writes.
        rows: interactions written per split.
        files: the file names written (relative to ``sequences/``).
    """

    def __init__(self, out: Path, schema, num_items: int) -> None:
        from twotower.data.sequences import SEQUENCES_DIR, SPLITS

        self.directory = Path(out) / SEQUENCES_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.train_count = np.zeros(num_items, np.int64)
        self.rows = {s: 0 for s in SPLITS}
        self.files: list[str] = []

    def write(self, user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, split: np.ndarray,
              columns: dict | None = None) -> None:
        """Append interactions of complete users sorted by (user, timestamp, raw row order)."""
        from twotower.data.sequences import TRAIN, build_sequence_rows, write_sequence_file

        if len(user) == 0:
            return
        name = f"part-{len(self.files):05d}.parquet"
        rows = build_sequence_rows(user, item, timestamp, split, self.schema, columns)
        counts = write_sequence_file(rows, str(self.directory / name))
        self.files.append(name)
        for k, v in counts.items():
            self.rows[k] += v
        self.train_count += np.bincount(np.asarray(item)[np.asarray(split) == TRAIN], minlength=len(self.train_count))

    def close(self) -> list[str]:
        """The file names written."""
        return list(self.files)
