"""Per-sample gradient engine: norms, inner products, Gram blocks and sketches of per-sample
loss gradients, computed from layer inputs and output gradients, never as an ``(n, d)`` matrix.

Routes, per trainable parameter:

- ``nn.Linear`` (inputs ``(n, in)`` or ``(n, *, in)``), ``nn.Conv2d`` (``groups=1``, zero
  padding, any stride/dilation, ``padding="same"`` when symmetric): outer-product formulas;
  per layer the cheaper of ``(P, P)`` Gram matrices and building ``(n, out, in k k)`` per block.
- ``nn.BatchNorm1d/2d/3d`` (running statistics), ``nn.LayerNorm``, ``nn.GroupNorm``,
  ``nn.RMSNorm``: their few per-sample gradients are built.
- ``nn.Embedding`` (no ``max_norm``, no ``scale_grad_by_freq``): index matching.
- Everything else (custom parameters, layers called twice per forward, weights shared between
  modules, other layer types): ``torch.func.vmap`` of ``grad``, or a per-sample autograd loop
  where vmap cannot trace the model.

Assumes samples do not interact in eval mode (true for the layers above; BatchNorm without
running statistics is refused).
"""

from fine_cli.grads.engine import GradEngine, Materialised, PerSample, UnitGrads

__all__ = ["GradEngine", "Materialised", "PerSample", "UnitGrads"]
