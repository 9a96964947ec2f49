"""Per-sample gradient quantities without an ``(n, d)`` matrix of per-sample gradients.

One forward pass with hooks records each covered layer's input, one backward pass gives
the gradient of the summed loss w.r.t. each covered layer's output; the layer formulas in
:mod:`fine_cli.grads.layers` turn these into squared norms, inner products and Gram blocks,
and :mod:`fine_cli.grads.fallback` builds per-sample gradients of any parameter left over.
The loss of sample ``z = (x, y)`` is ``task.loss(model(x), y)`` (:mod:`fine_cli.tasks`;
cross-entropy for classification), its gradient ``g(z)`` runs over all trainable parameters,
and everything is computed in eval mode.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fine_cli.grads import layers
from fine_cli.grads.factors import EmbeddingFactor, Factor, MaterialFactor, OuterFactor
from fine_cli.grads.fallback import Fallback
from fine_cli.tasks import ClassificationTask, Task

T = TypeVar("T")

# Temporaries of one layer's formula (unfolded inputs, Gram blocks) stay below this when no
# memory budget is given: large enough that an MLP chunk is one block, small next to RAM.
DEFAULT_WORK_MB = 256
# Memory per sample of a chunk ~ COPIES_PER_ACTIVATION x (activations per sample) x element
# size: autograd keeps about one copy of each activation, the hooks hold the covered layers'
# inputs, the backward pass makes one output gradient per layer, plus slack for temporaries.
COPIES_PER_ACTIVATION = 4


@dataclass
class PerSample:
    """Per-sample quantities of ``n`` points; all float32 on the model's device."""

    loss: Tensor  # (n,) the task's per-sample loss
    margin: Tensor  # (n,) the task's margin (classification: true logit - best other)
    sqnorm: Tensor  # (n,) ||g(z_i)||^2
    ips: Tensor  # (K, n) <g(z_i), v_k>
    # (L, n) sum_{j in batch l} <g(z_i), g(z_j)>^2, when per_sample(..., squares=True)
    squares: Tensor | None = None


@dataclass
class _Unit:
    """Trainable parameters handled together: one covered layer, or the fallback set."""

    names: tuple[str, ...]  # keys of the factor's vector(); direct names, or full names
    index: list[int]  # positions of those parameters in GradEngine.params
    module: nn.Module | None  # None for the fallback unit


@dataclass
class _Capture:
    loss: Tensor  # (c,) in the parameters' dtype
    margin: Tensor  # (c,)
    factors: list[Factor | None]  # aligned with GradEngine._all_units(); None = zero gradient


class _Replanned(Exception):
    """A layer turned out to be called twice; the plan changed, so the call starts over."""


class GradEngine:
    """Per-sample loss gradients of ``model``: norms, inner products and Gram blocks.

    ``chunk_size`` samples go through the model at once. With ``memory_budget_mb`` the chunk
    size is chosen instead on the first call: a one-sample forward pass counts the
    activations ``act`` of all leaf modules, a sample is taken to cost
    ``COPIES_PER_ACTIVATION * act * itemsize + 2 * d_fallback * itemsize`` bytes, half the
    budget goes to the chunk (half of that to each of the two chunks of :meth:`gram`) and a
    quarter to per-layer temporaries.

    The model is switched to eval mode for every call and its previous train/eval flags are
    restored afterwards; parameter ``.grad`` fields and BatchNorm running statistics are not
    touched.
    """

    def __init__(
        self,
        model: nn.Module,
        chunk_size: int = 2048,
        memory_budget_mb: int | None = None,
        task: Task | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}.")
        if memory_budget_mb is not None and memory_budget_mb < 1:
            raise ValueError(
                f"memory_budget_mb: expected a positive number of MiB or None, got "
                f"{memory_budget_mb}."
            )
        self.model = model
        self.task: Task = task if task is not None else ClassificationTask()
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model: it has no trainable parameters, so g(z) is empty.")
        self.chunk_size = chunk_size
        self.gram_chunk_size = chunk_size
        self.work_bytes = DEFAULT_WORK_MB << 20
        self._budget_mb = memory_budget_mb
        self._full_names = {id(p): k for k, p in model.named_parameters()}
        self._demoted: set[int] = set()  # layers called more than once per forward pass
        self._clone = False  # set once an in-place op is seen on a hooked tensor
        self._plan_id = 0  # bumped by every _plan(): prepared probe batches check it
        for m in model.modules():
            layers.check_independent(m)
        self._plan()

    # ---- public API -----------------------------------------------------------------

    def batch_grad_sum(self, x: Tensor, y: Tensor) -> list[Tensor]:
        """``sum_i g(z_i)``, one tensor per trainable parameter, in the parameters' dtype.

        ``x``: ``(n, ...)`` inputs, ``y``: ``(n, ...)`` targets of the task.
        """
        x, y = self._inputs(x, y, "x", "y")
        total = [torch.zeros_like(p) for p in self.params]
        with self._eval():
            self._size(x)
            for s0 in range(0, x.shape[0], self.chunk_size):
                xc, yc = x[s0 : s0 + self.chunk_size], y[s0 : s0 + self.chunk_size]
                with torch.enable_grad():
                    loss = self.task.loss(self.model(xc), yc).sum()
                gs = torch.autograd.grad(loss, self.params, allow_unused=True)
                for t, g in zip(total, gs, strict=True):
                    if g is not None:
                        t += g
        return total

    def per_sample(
        self,
        x: Tensor,
        y: Tensor,
        vectors: Sequence[Sequence[Tensor]] = (),
        batches: Sequence[tuple[Tensor, Tensor]] | ProbeBatches = (),
        squares: bool = False,
    ) -> PerSample:
        """Loss, margin, ``||g(z_i)||^2`` and inner products for ``n`` points.

        ``x``: ``(n, ...)``, ``y``: ``(n,)``; each of the ``K`` vectors is a list shaped like
        :meth:`batch_grad_sum`'s output; each of the ``L`` batches ``(xb, yb)`` stands for
        its gradient sum ``sum_{j in batch} g(z_j)``. Returns ``ips`` of shape ``(K + L, n)``:
        the vectors' rows first, then the batches'. A batch's inner products take, per
        layer, the cheaper of two exact routes: through the summed vector, or through the
        (n x batch) Gram block of the layer's factors (cheaper for wide Linear layers and
        small batches: ``b (d_in + d_out)`` against ``d_in d_out`` flops per point).
        ``batches`` may also be what :meth:`probe_batches` returned, so that calls over
        chunks of a large set capture the batches once.

        ``squares=True`` also returns ``squares`` ``(L, n)``: each batch's sum of squared
        inner products ``sum_{j in batch} <g(z_i), g(z_j)>^2``, from the ``(n, b_total)``
        Gram block of the points with all batch points, summed over layers in the same pass
        (the layers on the Gram route reuse their block; the others add theirs).
        """
        x, y = self._inputs(x, y, "x", "y")
        vecs = self._vectors(vectors)
        probes: Sequence[tuple[Tensor, Tensor]] | ProbeBatches = batches
        if not isinstance(batches, ProbeBatches):
            probes = [self._inputs(xb, yb, "batches.x", "batches.y") for xb, yb in batches]
        if squares and not probes:
            raise ValueError("squares: needs batches, whose points the squares run over.")
        with self._eval():
            self._size(x)
            return self._retrying(lambda: self._per_sample(x, y, vecs, probes, squares))

    def probe_batches(self, batches: Sequence[tuple[Tensor, Tensor]]) -> ProbeBatches:
        """The ``L`` batches ``(xb, yb)`` prepared once (their factors captured) for many
        :meth:`per_sample` calls over chunks of the training set."""
        probes = [self._inputs(xb, yb, "batches.x", "batches.y") for xb, yb in batches]
        with self._eval():
            return self._retrying(lambda: ProbeBatches(self, probes))

    def gram(self, xa: Tensor, ya: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        """``(na, nb)`` float32 matrix of ``<g(a_i), g(b_j)>``, chunked over both sets."""
        xa, ya = self._inputs(xa, ya, "xa", "ya")
        xb, yb = self._inputs(xb, yb, "xb", "yb")
        with self._eval():
            self._size(xa)
            return self._retrying(lambda: self._gram(xa, ya, xb, yb))

    def project(self, x: Tensor, y: Tensor, k: int, seed: int) -> Tensor:
        """``(n, k)`` float32 count-sketch of each ``g(z_i)``; the same ``seed`` gives the
        same sketch, and ``E[<S g, S h>] = <g, h>`` over seeds (see :mod:`.sketch`)."""
        from fine_cli.grads.sketch import Sketcher

        if k < 1:
            raise ValueError(f"k: expected a positive sketch dimension, got {k}.")
        x, y = self._inputs(x, y, "x", "y")
        with self._eval():
            self._size(x)
            return self._retrying(lambda: self._project(x, y, Sketcher(k, seed)))

    def materialise(self, x: Tensor, y: Tensor) -> Materialised:
        """Loss, margin and the per-sample gradients of every unit, built as ``(n, D_u)``
        matrices, for maps of ``g(z)`` that the factored formulas cannot carry (LESS's
        elementwise Adam preconditioning). One capture of the ``n`` points (no chunking:
        pass a chunk); :meth:`Materialised.units` builds one unit at a time, so that only
        one ``(n, D_u)`` block need exist at once.
        """
        x, y = self._inputs(x, y, "x", "y")
        with self._eval():
            cap = self._retrying(lambda: self._capture(x, y))
        pairs = zip(self._all_units(), cap.factors, strict=True)
        units = [(self._unit_key(j), u, f) for j, (u, f) in enumerate(pairs)]
        return Materialised(cap.loss.float(), cap.margin.float(), units)

    # ---- planning ---------------------------------------------------------------------

    def _plan(self) -> None:
        """Split the trainable parameters into covered layers and the fallback set."""
        self._plan_id = getattr(self, "_plan_id", 0) + 1
        pos = {id(p): i for i, p in enumerate(self.params)}
        owners = Counter(id(p) for m in self.model.modules() for p in m.parameters(False))
        self._units: list[_Unit] = []
        covered: set[int] = set()
        for m in self.model.modules():
            direct = [(k, p) for k, p in m.named_parameters(recurse=False) if p.requires_grad]
            names = tuple(k for k, _ in direct)
            # a weight shared between modules needs cross terms no single formula has
            shared = any(owners[id(p)] > 1 for _, p in direct)
            if not direct or shared or id(m) in self._demoted or not layers.supports(m, names):
                continue
            self._units.append(_Unit(names, [pos[id(p)] for _, p in direct], m))
            covered.update(id(p) for _, p in direct)
        rest = [i for i, p in enumerate(self.params) if id(p) not in covered]
        full = tuple(self._full_names[id(self.params[i])] for i in rest)
        self._fallback_unit = _Unit(full, rest, None) if rest else None
        self._fallback = (
            Fallback(self.model, list(full), [self.params[i] for i in rest], self.task)
            if rest
            else None
        )

    def _all_units(self) -> list[_Unit]:
        return self._units + ([self._fallback_unit] if self._fallback_unit else [])

    def _size(self, x: Tensor) -> None:
        """With a memory budget, pick chunk sizes from a one-sample forward pass (once)."""
        if self._budget_mb is None or x.shape[0] == 0:
            return
        budget = self._budget_mb << 20
        counts: list[int] = []

        def count(m: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, Tensor):
                counts.append(output.numel())

        leaves = [m for m in self.model.modules() if not list(m.children())]
        handles = [m.register_forward_hook(count) for m in leaves]
        try:
            with torch.no_grad():
                self.model(x[:1])
        finally:
            for h in handles:
                h.remove()
        elt = self.params[0].element_size()
        rest = self._fallback_unit.index if self._fallback_unit else []
        d_fallback = sum(self.params[i].numel() for i in rest)
        per_sample = elt * (COPIES_PER_ACTIVATION * (sum(counts) + x[:1].numel()) + 2 * d_fallback)
        self.chunk_size = max(1, budget // 2 // per_sample)
        self.gram_chunk_size = max(1, self.chunk_size // 2)
        self.work_bytes = max(1 << 20, budget // 4)
        self._budget_mb = None  # sized once; the attributes above now hold the choice

    # ---- one chunk ----------------------------------------------------------------------

    def _capture(self, x: Tensor, y: Tensor) -> _Capture:
        """Loss, margin and every unit's factor for one chunk ``x`` ``(c, ...)``."""
        records: dict[int, list[tuple[Tensor, int, Tensor, int]]] = {
            id(u.module): [] for u in self._units
        }
        clone = self._clone

        def hook(
            m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor
        ) -> Tensor | None:
            a = args[0] if args else next(iter(kwargs.values()))
            if clone:  # later in-place ops then change copies, not what we differentiate
                records[id(m)].append((a.detach().clone(), -1, out, -1))
                return out.clone()
            records[id(m)].append((a, a._version, out, out._version))
            return None

        handles = [
            u.module.register_forward_hook(hook, with_kwargs=True) for u in self._units if u.module
        ]
        try:
            with torch.enable_grad():
                outputs = self.model(x)
                loss = self.task.loss(outputs, y)
        finally:
            for h in handles:
                h.remove()
        for u in self._units:
            if len(records[id(u.module)]) > 1:
                self._demoted.add(id(u.module))
                self._plan()
                raise _Replanned
        seen = [r[0] for r in records.values() if r]
        if not clone and any(a._version != va or o._version != vo for a, va, o, vo in seen):
            self._clone = True
            return self._capture(x, y)

        factors: list[Factor | None] = [None] * len(self._units)
        live = [
            (i, records[id(u.module)][0])
            for i, u in enumerate(self._units)
            if records[id(u.module)] and records[id(u.module)][0][2].requires_grad
        ]
        if live:
            deltas = torch.autograd.grad(loss.sum(), [rec[2] for _, rec in live], allow_unused=True)
            for (i, rec), delta in zip(live, deltas, strict=True):
                if delta is not None:  # None: the output does not reach the loss
                    module = self._units[i].module
                    assert module is not None
                    factors[i] = layers.make_factor(
                        module, rec[0].detach(), delta, self._units[i].names
                    )
        if self._fallback is not None and self._fallback_unit is not None:
            grads = self._fallback.grads(x, y)
            factors.append(MaterialFactor(grads, self._fallback_unit.names))
        with torch.no_grad():
            margin = self.task.margin(_detached(outputs), y)
        return _Capture(loss.detach(), margin, factors)

    def _per_sample(
        self,
        x: Tensor,
        y: Tensor,
        vecs: list[list[Tensor]],
        probes: Sequence[tuple[Tensor, Tensor]] | ProbeBatches,
        squares: bool = False,
    ) -> PerSample:
        probe: ProbeBatches | None = None
        if isinstance(probes, ProbeBatches):
            # prepared under another plan (a layer found to be called twice since): redo
            probe = probes if probes.plan == self._plan_id else ProbeBatches(self, probes.probes)
        elif probes:
            probe = ProbeBatches(self, list(probes))
        n, k = x.shape[0], len(vecs)
        n_b = len(probe.probes) if probe is not None else 0
        loss, margin, sq = self._zeros(n), self._zeros(n), self._zeros(n)
        ips = self._zeros(k + n_b, n)
        squared = self._zeros(n_b, n) if squares else None
        stacked: dict[int, Tensor | None] = {}  # per unit: its slice of the vectors, built once
        for s0 in range(0, n, self.chunk_size):
            s1 = min(n, s0 + self.chunk_size)
            cap = self._capture(x[s0:s1], y[s0:s1])
            loss[s0:s1], margin[s0:s1] = cap.loss, cap.margin
            # (c, b_total) <g(z_i), g(z_j)> with every batch point, summed over the units
            block = self._zeros(s1 - s0, probe.b_total) if probe is not None and squares else None
            for j, (u, f) in enumerate(zip(self._all_units(), cap.factors, strict=True)):
                if f is None:
                    continue
                by_gram = probe is not None and probe.by_gram(j, f)
                if j not in stacked:
                    rows = list(vecs)
                    if probe is not None and not by_gram:
                        rows += probe.sums()
                    stacked[j] = (
                        torch.stack([f.vector(_named(u, v)) for v in rows]) if rows else None
                    )
                s, ip = f.sqnorm_ips(stacked[j], self.work_bytes)
                sq[s0:s1] += s
                unit_gram = probe.gram(j, f) if probe is not None and (by_gram or squares) else None
                if by_gram:
                    assert probe is not None and unit_gram is not None
                    ips[:k, s0:s1] += ip
                    ips[k:, s0:s1] += probe.segment_sums(unit_gram)
                else:
                    ips[:, s0:s1] += ip
                if block is not None and unit_gram is not None:
                    block += unit_gram
            if squared is not None and block is not None and probe is not None:
                squared[:, s0:s1] = probe.segment_sums(block.double() ** 2)
        return PerSample(
            loss.float(),
            margin.float(),
            sq.float(),
            ips.float(),
            None if squared is None else squared.float(),
        )

    def _gram(self, xa: Tensor, ya: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        na, nb, c = xa.shape[0], xb.shape[0], self.gram_chunk_size
        out = self._zeros(na, nb)
        spans_b = [(s, min(nb, s + c)) for s in range(0, nb, c)]
        # a single chunk of b is captured once rather than once per chunk of a
        only_b = self._capture(xb, yb) if len(spans_b) == 1 else None
        for a0 in range(0, na, c):
            a1 = min(na, a0 + c)
            cap_a = self._capture(xa[a0:a1], ya[a0:a1])
            for b0, b1 in spans_b:
                cap_b = only_b if only_b is not None else self._capture(xb[b0:b1], yb[b0:b1])
                for fa, fb in zip(cap_a.factors, cap_b.factors, strict=True):
                    if fa is not None and fb is not None:
                        out[a0:a1, b0:b1] += fa.gram(fb, self.work_bytes)
        return out.float()

    def _project(self, x: Tensor, y: Tensor, sketcher: Any) -> Tensor:
        n = x.shape[0]
        out = self._zeros(n, sketcher.k)
        for s0 in range(0, n, self.chunk_size):
            s1 = min(n, s0 + self.chunk_size)
            cap = self._capture(x[s0:s1], y[s0:s1])
            for j, f in enumerate(cap.factors):
                if f is not None:
                    out[s0:s1] += sketcher.sketch(self._unit_key(j), f)
        return out.float()

    def _unit_key(self, j: int) -> str:
        """A stable name for unit ``j``'s hash functions: its first parameter's full name."""
        unit = self._all_units()[j]
        return self._full_names[id(self.params[unit.index[0]])] + f"/{len(unit.index)}"

    # ---- helpers ------------------------------------------------------------------------

    @contextmanager
    def _eval(self) -> Iterator[None]:
        flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            yield
        finally:
            for m, flag in flags:  # exact per-module flags, not train(flag) on the root
                m.training = flag

    def _retrying(self, fn: Callable[[], T]) -> T:
        for _ in range(len(self._units) + 1):
            try:
                return fn()
            except _Replanned:
                continue
        return fn()

    def _zeros(self, *shape: int) -> Tensor:
        """Zeros in the parameters' dtype and device: sums run at the model's precision."""
        return torch.zeros(shape, dtype=self.params[0].dtype, device=self.params[0].device)

    def _inputs(self, x: Tensor, y: Tensor, x_name: str, y_name: str) -> tuple[Tensor, Tensor]:
        if y.dim() < 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{y_name}: expected targets whose first dimension matches {x_name}'s "
                f"({x.shape[0]},), got {tuple(y.shape)}."
            )
        device, dtype = self.params[0].device, self.params[0].dtype
        # float inputs follow the model's dtype so a float64 model can take float32 data
        x = x.to(device, dtype) if x.is_floating_point() else x.to(device)
        # integer targets (labels, token ids) are int64, as cross-entropy wants them
        y = y.to(device, dtype) if y.is_floating_point() else y.to(device, torch.long)
        return x, y

    def _vectors(self, vectors: Sequence[Sequence[Tensor]]) -> list[list[Tensor]]:
        out = []
        for k, v in enumerate(vectors):
            if len(v) != len(self.params):
                raise ValueError(
                    f"vectors[{k}]: expected {len(self.params)} tensors (one per trainable "
                    f"parameter, as batch_grad_sum returns), got {len(v)}."
                )
            row = []
            for t, p in zip(v, self.params, strict=True):
                if t.shape != p.shape:
                    raise ValueError(
                        f"vectors[{k}]: expected a tensor of shape {tuple(p.shape)} for "
                        f"parameter {self._full_names[id(p)]}, got {tuple(t.shape)}."
                    )
                row.append(t.detach().to(p.device, p.dtype))
            out.append(row)
        return out


@dataclass
class UnitGrads:
    """One unit's per-sample gradients, built: ``grads`` ``(n, D_u)``, columns laid out as
    ``factor`` lays out a parameter-space vector (:meth:`layout`)."""

    key: str  # the unit's stable name; project()'s sketch hashes use it
    factor: Factor
    grads: Tensor  # (n, D_u) in the parameters' dtype
    _unit: _Unit

    def layout(self, vector: Sequence[Tensor]) -> Tensor:
        """``(D_u,)``: this unit's part of ``vector`` (one tensor per trainable parameter,
        as :meth:`GradEngine.batch_grad_sum` returns) in the order of ``grads``' columns."""
        return self.factor.vector(_named(self._unit, list(vector))).reshape(-1)


class Materialised:
    """What :meth:`GradEngine.materialise` returns: ``loss`` and ``margin`` ``(n,)``, and
    :meth:`units`, which builds each unit's :class:`UnitGrads` in turn."""

    def __init__(
        self, loss: Tensor, margin: Tensor, units: list[tuple[str, _Unit, Factor | None]]
    ) -> None:
        self.loss = loss
        self.margin = margin
        self._units = {key: (unit, f) for key, unit, f in units}

    def units(self) -> Iterator[UnitGrads]:
        """Every unit whose output reaches the loss (a unit that does not has zero
        gradients and is skipped)."""
        for key in self._units:
            built = self.unit(key)
            if built is not None:
                yield built

    def keys(self) -> list[str]:
        """Keys of the units with non-zero gradients, in the engine's unit order."""
        return [key for key, (_, f) in self._units.items() if f is not None]

    def unit(self, key: str) -> UnitGrads | None:
        """The unit called ``key`` built, or None when its gradients are zero."""
        unit, f = self._units[key]
        return None if f is None else UnitGrads(key, f, _dense(f), unit)


def _dense(f: Factor) -> Tensor:
    """``(n, D_u)`` per-sample gradients of a factor, in its ``vector()`` layout."""
    if isinstance(f, OuterFactor):
        return f.materialise(*f.rows(0, f.n))
    if isinstance(f, MaterialFactor):
        return f.grads
    assert isinstance(f, EmbeddingFactor)
    n, _, dim = f.delta.shape
    cols = (f.idx[:, :, None] * dim + torch.arange(dim, device=f.idx.device)).reshape(n, -1)
    out = f.delta.new_zeros(n, f.num_rows * dim)
    return out.scatter_add_(1, cols, f.delta.reshape(n, -1))


class ProbeBatches:
    """The L probe batches of :meth:`GradEngine.per_sample`: their factors, captured once
    for all of them together, and their gradient sums, computed once when first asked for
    (by a layer on the vector route, or by the collector for their squared norms).
    """

    def __init__(self, engine: GradEngine, probes: list[tuple[Tensor, Tensor]]) -> None:
        self.engine = engine
        self.probes = probes
        self.plan = engine._plan_id
        xb = torch.cat([p[0] for p in probes])
        yb = torch.cat([p[1] for p in probes])
        self.capture = engine._capture(xb, yb)
        sizes = torch.tensor([p[0].shape[0] for p in probes])
        seg = torch.repeat_interleave(torch.arange(len(probes)), sizes)
        # (b_total, L) 0/1: column l sums the Gram columns of batch l
        self.segments = F.one_hot(seg, len(probes)).to(engine.params[0])
        self.b_total = int(sizes.sum())
        self._sums: list[list[Tensor]] | None = None
        self._route: dict[int, bool] = {}

    def set_sums(self, sums: list[list[Tensor]]) -> None:
        """Give the batches' gradient sums computed elsewhere (sharded over processes and
        all-reduced: fine_cli/distributed.py), in :meth:`sums`' layout."""
        if len(sums) != len(self.probes):
            raise ValueError(f"sums: expected {len(self.probes)} batches, got {len(sums)}.")
        self._sums = [[t.detach() for t in vec] for vec in sums]

    def sums(self) -> list[list[Tensor]]:
        if self._sums is None:
            self._sums = [self.engine.batch_grad_sum(xb, yb) for xb, yb in self.probes]
        return self._sums

    def by_gram(self, j: int, f: Factor) -> bool:
        """Whether unit ``j``'s batch inner products go through its Gram block (cheaper)."""
        if j not in self._route:
            bf = self.capture.factors[j]
            ok = (
                isinstance(f, OuterFactor)
                and isinstance(bf, OuterFactor)
                and f.positions == 1
                and bf.positions == 1
            )
            if ok:
                assert isinstance(f, OuterFactor)
                gram_cost = self.b_total * (f.d_in + f.d_out)
                vector_cost = len(self.probes) * f.d_in * f.d_out
                ok = gram_cost < vector_cost
            self._route[j] = ok
        return self._route[j]

    def gram(self, j: int, f: Factor) -> Tensor:
        """``(c, b_total)``: unit ``j``'s ``<g(z_i), g(z_j)>`` of chunk ``f`` with every
        batch point (zeros where the layer's output does not reach the batches' loss)."""
        bf = self.capture.factors[j]
        if bf is None:
            return self.engine._zeros(f.n, self.b_total)
        return f.gram(bf, self.engine.work_bytes)

    def segment_sums(self, block: Tensor) -> Tensor:
        """``(L, c)``: each batch's sum of the columns of ``block`` ``(c, b_total)``."""
        return (block @ self.segments.to(block.dtype)).T


def _named(unit: _Unit, v: list[Tensor]) -> dict[str, Tensor]:
    return {k: v[i] for k, i in zip(unit.names, unit.index, strict=True)}


def _detached(outputs: Any) -> Any:
    """``outputs`` without autograd history (a tensor, or an object with ``.logits``)."""
    if isinstance(outputs, Tensor):
        return outputs.detach()
    logits = getattr(outputs, "logits", None)
    return logits.detach() if isinstance(logits, Tensor) else outputs
