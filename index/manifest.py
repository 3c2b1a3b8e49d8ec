"""``manifest.json``: what an index directory holds and how to check it.

An index directory (local path or pyarrow filesystem URI)::

    OUT/
      manifest.json                 # this module's Manifest, written last
      shard-00000.faiss             # faiss.write_index of shard 0 (metric inner product)
      shard-00000.ids.parquet       # id map of shard 0: row p = FAISS position p -> item_idx (int64), item_id (string)
      ...
      embeddings/shard=K/*.parquet  # optional: item_idx, item_id, embedding fixed_size_list<float32>[dim]

Sharding: item ``i`` goes to shard ``blake2b(item_id utf-8, digest_size=8) as big-endian uint64 mod S``
(:func:`twotower.index.build.shard_of`), stable across runs, machines and catalogue order.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from twotower import storage

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
METRIC = "inner_product"
PARTITION = {"method": "hash", "hash": "blake2b-64(item_id utf-8), big-endian, mod num_shards"}


class IndexFormatError(ValueError):
    """An index directory that is missing files, corrupted (sha256 mismatch), inconsistent (dimension,
    counts, metric), of an unknown format version, or built from another checkpoint than the one it is
    used with. The message names the file and the mismatch."""


def verify_model_sha256(recorded: str | None, model_sha256: str, where: str) -> None:
    """The one check that an index artifact was built from a checkpoint: the sha256 of ``model.pt`` that
    the artifact records (``manifest.json``'s ``checkpoint.model_sha256``, the index job's
    ``_embeddings.json``) must equal the checkpoint's (``CheckpointInfo.model_sha256``).

    Raises:
        IndexFormatError: they differ, or the artifact records none; the message names ``where`` (the
            file) and both digests.
    """
    if recorded != model_sha256:
        raise IndexFormatError(f"{where}: built from checkpoint model sha256 {str(recorded)[:16]}..., "
                               f"the checkpoint used with it has {str(model_sha256)[:16]}...")


@dataclass(frozen=True)
class ShardInfo:
    """One shard: ``count`` vectors in ``index_file`` whose id map is ``ids_file`` (paths relative to OUT)."""

    shard: int
    count: int
    index_file: str
    ids_file: str
    build_seconds: float = 0.0


@dataclass
class Manifest:
    """Contents of ``manifest.json``.

    Attributes:
        dim: embedding dimension D of every shard and of the queries.
        factory: FAISS index factory string (``Flat``, ``IVF1024,Flat``, ``IVF1024,PQ16``, ``HNSW32``, ...).
        shards: one :class:`ShardInfo` per shard, ordered by shard number 0..S-1.
        files: sha256 (hex) of every file of the index, by path relative to OUT (manifest excluded).
        search_params: FAISS parameters applied at load (``nprobe`` for IVF, ``efSearch`` for HNSW).
        checkpoint: ``path``, ``model_sha256`` (sha256 of model.pt from checkpoint.json), ``epoch``.
        normalized: whether the item tower L2-normalises (scores are then cosine similarities).
        num_items: total vectors over all shards.
        partition: how items were assigned to shards (see the module docstring).
        build_params: training sample size, efConstruction, seed ... used when building.
        created_at: ISO-8601 UTC time of the build. metric: always ``inner_product``.
        extra: free-form job statistics (timings, batch size, ...).
    """

    dim: int
    factory: str
    shards: list[ShardInfo]
    files: dict[str, str]
    search_params: dict[str, int] = field(default_factory=dict)
    checkpoint: dict = field(default_factory=dict)
    normalized: bool = True
    num_items: int = 0
    partition: dict = field(default_factory=lambda: dict(PARTITION))
    build_params: dict = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    metric: str = METRIC
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, where: str = MANIFEST_NAME) -> "Manifest":
        """Parse and check a manifest dict; ``where`` names the file in error messages.

        Raises:
            IndexFormatError: unknown format version, metric other than inner product, missing or
                malformed fields, shard numbering not 0..S-1, counts not summing to ``num_items``, or a
                shard file without a checksum.
        """
        if not isinstance(d, dict):
            raise IndexFormatError(f"{where}: top level must be a JSON object")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise IndexFormatError(f"{where}: format_version {version!r} is not supported "
                                   f"(this twotower reads version {FORMAT_VERSION})")
        try:
            shards = [ShardInfo(**s) for s in d["shards"]]
            m = cls(dim=int(d["dim"]), factory=str(d["factory"]), shards=shards, files=dict(d["files"]),
                    **{k: d[k] for k in ("search_params", "checkpoint", "normalized", "num_items", "partition",
                                         "build_params", "created_at", "metric", "format_version", "extra")
                       if k in d})
        except (KeyError, TypeError, ValueError) as e:
            raise IndexFormatError(f"{where}: missing or malformed field: {e!r}") from e
        if m.metric != METRIC:
            raise IndexFormatError(f"{where}: metric {m.metric!r} is not supported (expected {METRIC!r})")
        if m.dim < 1:
            raise IndexFormatError(f"{where}: dim must be >= 1, got {m.dim}")
        if [s.shard for s in shards] != list(range(len(shards))) or not shards:
            raise IndexFormatError(f"{where}: shards must be numbered 0..S-1 in order, got "
                                   f"{[s.shard for s in shards]}")
        if sum(s.count for s in shards) != m.num_items:
            raise IndexFormatError(f"{where}: shard counts sum to {sum(s.count for s in shards)}, "
                                   f"num_items is {m.num_items}")
        for s in shards:
            for name in (s.index_file, s.ids_file):
                if name not in m.files:
                    raise IndexFormatError(f"{where}: shard {s.shard} file {name!r} has no sha256 entry")
        return m

    def write(self, directory: str) -> None:
        """Write ``directory/manifest.json`` (local path or URI)."""
        storage.write_bytes(storage.join(directory, MANIFEST_NAME), self.to_json().encode())

    @classmethod
    def read(cls, directory: str) -> "Manifest":
        """Read and check ``directory/manifest.json``.

        Raises:
            IndexFormatError: no manifest (not an index directory, or an unfinished build), invalid JSON,
                or any check of :meth:`from_dict`.
        """
        path = storage.join(directory, MANIFEST_NAME)
        d = storage.read_json(path, IndexFormatError, "missing (not an index directory, or its build did not finish)")
        return cls.from_dict(d, where=path)

    def verify_checkpoint(self, model_sha256: str, directory: str) -> None:
        """Raise IndexFormatError unless this manifest (read from ``directory``) records the checkpoint
        whose model.pt has sha256 ``model_sha256`` (:func:`verify_model_sha256`)."""
        verify_model_sha256(self.checkpoint.get("model_sha256"), model_sha256,
                            storage.join(str(directory), MANIFEST_NAME))

    def verify_files(self, directory: str) -> None:
        """Check that every file listed in ``files`` exists under ``directory`` with the recorded sha256.

        Raises:
            IndexFormatError: ``<path>: missing`` or ``<path>: sha256 mismatch (expected .., found ..)``.
        """
        for rel, digest in sorted(self.files.items()):
            path = storage.join(directory, rel)
            try:
                found = storage.sha256(path)
            except FileNotFoundError as e:
                raise IndexFormatError(f"{path}: missing (listed in {MANIFEST_NAME})") from e
            if found != digest:
                raise IndexFormatError(f"{path}: sha256 mismatch (expected {digest[:16]}..., found "
                                       f"{found[:16]}...): file corrupted or modified")
