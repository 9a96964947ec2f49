"""Per-sample gradients, built explicitly, for parameters that no layer formula covers.

These are usually few (a custom module's scale, a shared weight), so building the
``(n, d_fallback)`` matrix per chunk is cheap. ``torch.func.vmap`` over ``grad`` does it in
one batched pass; models that vmap cannot trace (data-dependent control flow, ``.item()``)
get a loop of one autograd call per sample instead.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fine_cli.tasks import Task


class Fallback:
    """Per-sample gradients of the summed loss w.r.t. ``names`` (full parameter names).

    The model must already be in eval mode when :meth:`grads` is called.
    """

    def __init__(
        self, model: nn.Module, names: list[str], params: list[Tensor], task: Task
    ) -> None:
        self.model = model
        self.task = task
        self.names = names
        self.params = params
        self.use_vmap = True

    def grads(self, x: Tensor, y: Tensor) -> Tensor:
        """``(n, d_fallback)`` per-sample gradients, parameters flattened in ``names`` order."""
        if self.use_vmap:
            try:
                return self._vmap(x, y)
            except Exception:  # vmap cannot trace every model; the loop below always works
                self.use_vmap = False
        return self._loop(x, y)

    def _vmap(self, x: Tensor, y: Tensor) -> Tensor:
        def loss_one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
            outputs = functional_call(self.model, p, (xi.unsqueeze(0),))
            return self.task.loss(outputs, yi.unsqueeze(0)).sum()

        fixed = {k: p.detach() for k, p in zip(self.names, self.params, strict=True)}
        per = vmap(grad(loss_one), in_dims=(None, 0, 0))(fixed, x, y)
        return torch.cat([per[k].reshape(x.shape[0], -1) for k in self.names], 1)

    def _loop(self, x: Tensor, y: Tensor) -> Tensor:
        rows = []
        for i in range(x.shape[0]):
            loss = self.task.loss(self.model(x[i : i + 1]), y[i : i + 1]).sum()
            gs = torch.autograd.grad(loss, self.params, allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(p)).reshape(-1)
                        for g, p in zip(gs, self.params, strict=True)
                    ]
                )
            )
        return torch.stack(rows)
