"""Optimizers for a model whose ID tables give sparse gradients (``nn.Embedding(sparse=True)``).

Dense optimizers (Adam, AdamW) refuse sparse gradients, and a dense update of a 10M-row table per step
(moments decayed on every row, weight decay on every row) would cost as much as the dense gradient we
avoid. So the parameters are split: ordinary ("dense") parameters get the configured optimizer with
``lr`` and ``weight_decay``; the sparse tables get a sparse-capable counterpart with the same ``lr``
that updates only the rows of the batch, and no weight decay:

    adam / adamw -> torch.optim.SparseAdam   (lazy Adam: moments of a row advance only when it is seen)
    adagrad      -> torch.optim.Adagrad      (sparse path: accumulators of the batch rows only)
    sgd          -> torch.optim.SGD, no momentum (a momentum buffer would touch every row ever seen)

Those keep per-row state as large as the table (SparseAdam: 2 floats per weight, so a 10M x 64 fp32
table costs 2.56 GB of weights + 5.1 GB of moments per worker). ``sparse="rowwise_adagrad"`` replaces
them by :class:`RowWiseAdagrad`: one accumulator per row (40 MB for 10M rows).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

OPTIMIZERS = ("adam", "adamw", "sgd", "adagrad")
SPARSE_OPTIMIZERS = ("auto", "rowwise_adagrad")


class RowWiseAdagrad(torch.optim.Optimizer):
    """Adagrad with one accumulator per table row, for 2-D parameters with sparse (or dense) gradients.

    For every row r in the gradient (the batch rows of a sparse gradient): with g_r (D,) its gradient,
    s_r += mean_j g_rj^2 and w_r -= lr * g_r / (sqrt(s_r) + eps). Adagrad (Duchi, Hazan & Singer, JMLR
    2011) with the accumulator shared across a row, as FBGEMM/TorchRec's EXACT_ROWWISE_ADAGRAD for
    DLRM-style embedding tables (Naumov et al., 2019): state is (rows,) float32 instead of (rows, D).
    No weight decay (a ``weight_decay`` key set on a group is ignored). Raises ValueError for a
    parameter that is not 2-D.
    """

    def __init__(self, params, lr: float = 0.01, eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "eps": eps})
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"RowWiseAdagrad needs 2-D (rows, dim) parameters, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["sum"] = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
                grad = p.grad
                if grad.is_sparse:
                    grad = grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                else:
                    rows, values = torch.arange(p.shape[0], device=p.device), grad
                acc = state["sum"]
                acc.index_add_(0, rows, values.pow(2).mean(dim=1))
                scale = group["lr"] / (acc[rows].sqrt() + group["eps"])
                p.index_add_(0, rows, -scale.unsqueeze(1) * values)
        return loss


def sparse_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the ``nn.Embedding`` / ``nn.EmbeddingBag`` modules of ``model`` with ``sparse=True``
    (each once, even when a module is shared by two towers). ``model`` may be a DDP wrapper."""
    seen: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.sparse:
            for p in module.parameters(recurse=False):
                seen.setdefault(id(p), p)
    return list(seen.values())


class SparseDenseOptimizer:
    """Steps a dense optimizer and a sparse one together; quacks like ``torch.optim.Optimizer`` for the
    training loop (``step``, ``zero_grad``, ``param_groups``, ``state_dict``, ``load_state_dict``).

    ``param_groups`` lists the dense groups then the sparse ones (the same dicts, so setting ``lr`` on
    them changes the optimizers). ``step`` pins ``weight_decay`` of the sparse groups to 0 (Adagrad
    rejects decay with sparse gradients; SparseAdam has none), whatever a caller set on them.
    """

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.Optimizer):
        self.dense, self.sparse = dense, sparse

    @property
    def param_groups(self) -> list[dict]:
        return self.dense.param_groups + self.sparse.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable | None = None):
        loss = self.dense.step(closure)
        for group in self.sparse.param_groups:
            if "weight_decay" in group:
                group["weight_decay"] = 0.0
        self.sparse.step()
        return loss

    def state_dict(self) -> dict:
        """``{"dense": state dict, "sparse": state dict}`` (tensors only: ``torch.load(weights_only=True)`` reads it)."""
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`. Raises ValueError for the state of a plain (dense-only) optimizer."""
        if set(state) != {"dense", "sparse"}:
            raise ValueError("optimizer state has keys %s, expected {'dense', 'sparse'}: it was saved by a "
                             "model without sparse ID embeddings (sparse_id_embeddings=false)" % sorted(state))
        self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float = 0.0, sparse_name: str = "auto"):
    """Optimizer for ``model`` (possibly DDP-wrapped): ``name`` in adam / adamw / adagrad / sgd (momentum 0.9).

    Without sparse tables: one ``torch.optim`` optimizer over all parameters. With them: a
    :class:`SparseDenseOptimizer`; the tables get the counterpart of ``name`` (module docstring) when
    ``sparse_name="auto"``, or :class:`RowWiseAdagrad` when ``sparse_name="rowwise_adagrad"``; same ``lr``.

    Raises:
        ValueError: unknown ``name`` or ``sparse_name``.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    if sparse_name not in SPARSE_OPTIMIZERS:
        raise ValueError(f"unknown sparse optimizer {sparse_name!r}; expected one of {', '.join(SPARSE_OPTIMIZERS)}")
    sparse = sparse_parameters(model)
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    dense_opt = _dense(name, dense, lr, weight_decay)
    if not sparse:
        return dense_opt
    if sparse_name == "rowwise_adagrad":
        sparse_opt = RowWiseAdagrad(sparse, lr=lr)
    elif name in ("adam", "adamw"):
        sparse_opt = torch.optim.SparseAdam(sparse, lr=lr)
    elif name == "adagrad":
        sparse_opt = torch.optim.Adagrad(sparse, lr=lr)
    else:
        sparse_opt = torch.optim.SGD(sparse, lr=lr)
    return SparseDenseOptimizer(dense_opt, sparse_opt)


def _dense(name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    kwargs = {"lr": lr, "weight_decay": weight_decay}
    if name == "adam":
        return torch.optim.Adam(params, **kwargs)
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if name == "adagrad":
        return torch.optim.Adagrad(params, **kwargs)
    return torch.optim.SGD(params, momentum=0.9, **kwargs)
