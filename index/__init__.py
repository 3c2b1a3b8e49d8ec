"""twotower.index: sharded FAISS indexes, manifest and exact-merge search (no Ray).

Public API: :class:`ShardedIndex` (load + search), :class:`Manifest` / :class:`IndexFormatError`,
:func:`build_local_index` (in-process builder), :func:`flat_index` (exact, in memory, no files),
:func:`merge_topk` (the exact top-k merge), :func:`exact_topk`, :func:`index_recall`, :func:`ann_rank_scores`. The Ray job that builds indexes at
scale is ``twotower.distributed.index_job``.
"""
from .build import IndexBuildError, default_search_params, parse_factory, shard_of
from .local import build_local_index, checkpoint_record, flat_index
from .manifest import FORMAT_VERSION, MANIFEST_NAME, IndexFormatError, Manifest, ShardInfo
from .merge import merge_topk
from .recall import ann_rank_scores, exact_topk, index_recall, recall_at_k
from .sharded import ShardedIndex

__all__ = ["FORMAT_VERSION", "MANIFEST_NAME", "IndexBuildError", "IndexFormatError", "Manifest", "ShardInfo",
           "ShardedIndex", "ann_rank_scores", "build_local_index", "checkpoint_record", "default_search_params",
           "exact_topk", "flat_index", "index_recall", "merge_topk", "parse_factory", "recall_at_k", "shard_of"]
