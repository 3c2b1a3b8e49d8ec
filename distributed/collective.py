"""Small torch.distributed helpers used inside Ray Train workers (all no-ops on a single worker)."""
from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a torch.distributed process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (B, ...) from every rank along dim 0 -> (world * B, ...), rank r at rows r*B.

    Float tensors that require grad go through ``torch.distributed.nn.functional.all_gather`` so the
    local slice keeps its gradient (remote slices are constants here; their own rank back-propagates
    them). Every rank must pass the same shape.
    """
    if not is_distributed():
        return t
    if t.requires_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(t), dim=0)
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sums(sums: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """Sum the values of ``sums`` over all ranks (float64).

    Every rank must pass the same keys (RankingAccumulator.sums() always returns all of them).
    """
    if not is_distributed():
        return dict(sums)
    keys = sorted(sums)
    t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {**sums, **dict(zip(keys, t.cpu().tolist()))}


def weight_digest(module: torch.nn.Module) -> str:
    """sha256 (hex) of every state-dict tensor's bytes in key order: equal digests = equal weights."""
    h = hashlib.sha256()
    for name, value in module.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def all_gather_object(obj: Any) -> list[Any]:
    """List of ``obj`` from every rank (``[obj]`` on a single worker)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
