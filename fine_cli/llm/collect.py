"""Signals of a main and an auxiliary LoRA model, from one capture per chunk.

The :class:`~fine_cli.collector.Collector` computes each quantity through the gradient
engine's factored formulas, one engine call (one forward and backward pass) per quantity.
A LoRA model's per-sample gradients are narrow (``r (d_in + d_out)`` entries per adapted
module), so :class:`LoraCollector` builds them instead, one module at a time
(:meth:`GradEngine.materialise`), and derives everything from one capture of each chunk:

- the Collector's test-mode arrays (docs/ARTIFACTS.md), as exact inner products: the
  same numbers (``tests/test_llm.py`` checks them against the Collector);
- LESS's arrays (``less_*``, :mod:`fine_cli.estimators.less`): inner products of every test
  prompt's gradient with each training point's Adam-preconditioned gradient, an
  elementwise map of the built gradient that no factored formula carries;
- count sketches (:class:`~fine_cli.grads.sketch.Sketcher`, the engine's hashes) of every
  gradient to the largest of ``sketch_dims``, folded to the smaller ones (bucket ``h mod
  d``: the sketch of dimension ``d`` with the same hashes, when ``d`` divides the largest),
  from which :meth:`LoraCollector.sketched` gives the same signals with every inner product
  replaced by its sketch estimate (the paper's d ablation, Fig. 9).

Queries are *query sets*: each the mean of its test prompts' measurements (an entity's
test prompts), so its gradient is the mean of theirs and every array of a query is linear
in them. LESS's arrays keep the prompts (LESS averages cosines per prompt).

Dimension names: C checkpoints, R probe pairs, b probe batch size, n training points,
m' test prompts, q queries, K the largest sketch dimension, D_u a unit's gradient width.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from fine_cli.batches import chunks, fetch, size
from fine_cli.errors import ConfigError, RunError
from fine_cli.grads import GradEngine, UnitGrads
from fine_cli.grads.sketch import Sketcher
from fine_cli.results import Signals, make_meta
from fine_cli.tasks import IGNORE_INDEX, SequenceTask, Task

MAIN, AUX = 0, 1
PRECONDITIONERS = ("adam", "none")


# Arrays of a signals result with a checkpoint axis, and which axis it is.
CHECKPOINT_AXIS = {
    "lr": 0,
    "probe_idx": 0,
    "checkpoint_epoch": 0,
    "less_gram": 0,
    "less_sqnorm": 0,
    "less_test_sqnorm": 0,
    **{
        k: 1
        for k in (
            "sqnorm",
            "ip",
            "probe_sqnorm",
            "loss",
            "margin",
            "test_sqnorm",
            "test_ip",
            "test_loss",
            "test_margin",
            "gram",
        )
    },
}


class LoraCollector:
    """Collects test-mode signals of two LoRA models trained side by side.

    Args:
        main, aux: the two models; their trainable parameters are the adapters.
        train_set: ``(tokens, targets)`` training instructions; index ``i`` is point ``i``.
        test_set: ``(tokens, targets)`` test prompts with their target answers.
        query_groups: the test prompts (positions) of each query; default: each prompt
            its own query.
        task: per-sample loss (default: ``SequenceTask``).
        probe_batch_size, probe_repeats, seed: b, R and the seed of the probe draws (the
            Collector's draws, in the same order).
        chunk_size: training points per capture.
        precondition: ``adam`` (LESS's preconditioned training gradients; ``checkpoint``
            then needs the main model's optimiser) or ``none`` (plain gradients).
        sketch_dims: count-sketch dimensions to collect (each must divide the largest);
            empty: none.
        sketch_seed: seed of the sketch hashes (the same for every run seed).
        labels, flip_mask, index: each instruction's group (an int, -1 = none), whether it
            is poisoned, and its index in the source.
    """

    def __init__(
        self,
        main: nn.Module,
        aux: nn.Module,
        train_set: Dataset,
        test_set: tuple[Tensor, Tensor],
        query_groups: Sequence[Sequence[int]] | None = None,
        task: Task | None = None,
        *,
        probe_batch_size: int = 64,
        probe_repeats: int = 1,
        seed: int = 0,
        chunk_size: int = 512,
        precondition: str = "adam",
        sketch_dims: Sequence[int] = (),
        sketch_seed: int = 0,
        labels: np.ndarray | None = None,
        flip_mask: np.ndarray | None = None,
        index: np.ndarray | None = None,
    ) -> None:
        self.n = size(train_set)
        if self.n < 2:
            raise ConfigError(f"train_set has {self.n} point(s); give at least 2.")
        if precondition not in PRECONDITIONERS:
            raise ConfigError(
                f"precondition '{precondition}': choose one of {', '.join(PRECONDITIONERS)}."
            )
        self.task: Task = task if task is not None else SequenceTask()
        self.models = [main, aux]
        self.engines = [GradEngine(m, chunk_size=chunk_size, task=self.task) for m in self.models]
        self.train_set = train_set
        self.xq, self.yq = test_set
        m_prompts = int(self.xq.shape[0])
        groups = (
            [list(g) for g in query_groups] if query_groups else [[i] for i in range(m_prompts)]
        )
        if sorted(i for g in groups for i in g) != list(range(m_prompts)):
            raise ConfigError(
                f"query_groups must place each of the {m_prompts} test prompts in exactly one "
                "query."
            )
        self.query_of = np.zeros(m_prompts, np.int64)
        for qi, g in enumerate(groups):
            self.query_of[g] = qi
        self.q = len(groups)
        # (q, m') mean over each query's prompts: a query's gradient is mean_q' g(q')
        self.mean_q = torch.zeros(self.q, m_prompts, dtype=torch.float64)
        for qi, g in enumerate(groups):
            self.mean_q[qi, g] = 1.0 / len(g)
        self.b = min(probe_batch_size, self.n)
        self.r = probe_repeats
        self.seed = seed
        self.chunk_size = chunk_size
        self.rng = np.random.default_rng(seed)
        self.precondition = precondition
        self.dims = sorted({int(d) for d in sketch_dims})
        self.k = self.dims[-1] if self.dims else 0
        if any(d < 1 or self.k % d for d in self.dims):
            raise ConfigError(
                f"sketch_dims {self.dims}: each must be a positive divisor of the largest "
                "(powers of two, e.g. 1024, 2048, 4096, 8192), so that one sketch folds to all."
            )
        self.sketcher = Sketcher(self.k, sketch_seed) if self.k else None
        self.sketch_seed = sketch_seed
        self.labels = np.full(self.n, -1, np.int64) if labels is None else np.asarray(labels)
        self.flip_mask = np.zeros(self.n, bool) if flip_mask is None else np.asarray(flip_mask)
        self.index = np.arange(self.n) if index is None else np.asarray(index)
        self.records: dict[int, list[dict[str, np.ndarray]]] = {0: []}  # 0 = exact
        for d in self.dims:
            self.records[d] = []
        self.lr: list[float] = []
        self.steps: list[int] = []
        self.collect_s = 0.0

    # ---- one checkpoint -------------------------------------------------------------

    def checkpoint(
        self,
        lr: float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        step: int | None = None,
    ) -> None:
        """Record checkpoint c at the models' current weights; ``optimizer`` (the main
        model's Adam) is needed for LESS's preconditioning and gives ``lr`` by default."""
        t0 = time.perf_counter()
        if lr is None:
            lr = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else 1.0
        if self.precondition == "adam" and optimizer is None:
            raise ConfigError(
                "checkpoint(): precondition 'adam' needs the main model's optimizer=."
            )
        probe = np.stack(
            [
                [np.sort(self.rng.choice(self.n, self.b, replace=False)) for _ in range(2)]
                for _ in range(self.r)
            ]
        )  # (R, 2, b)
        parts = [self._model(mi, probe, optimizer if mi == MAIN else None) for mi in range(2)]
        for key, recs in self.records.items():
            rec = {k: np.stack([p[key][k] for p in parts]) for k in parts[0][key] if k != "less"}
            rec["probe_idx"] = probe
            rec.update(parts[MAIN][key]["less"])
            for k in ("sqnorm", "ip", "loss", "gram"):
                if not np.all(np.isfinite(rec[k])):
                    raise RunError(
                        f"training diverged: non-finite values in the collected '{k}' at "
                        f"checkpoint {len(recs) + 1}; lower llm.train.lr."
                    )
            recs.append(rec)
        self.lr.append(float(lr))
        self.steps.append(int(step) if step is not None else len(self.lr))
        if any(p.is_cuda for p in self.engines[MAIN].params):
            torch.cuda.synchronize()
        self.collect_s += time.perf_counter() - t0

    def _model(
        self, mi: int, probe: np.ndarray, optimizer: torch.optim.Optimizer | None
    ) -> dict[int, dict[str, Any]]:
        """Every array of one model at this checkpoint, exact (key 0) and per sketch dim."""
        engine = self.engines[mi]
        dev, dt = engine.params[0].device, engine.params[0].dtype
        main = mi == MAIN  # LESS's arrays are the main model's only
        m_prompts, n, r2 = self.xq.shape[0], self.n, 2 * self.r
        acc = _Acc(
            _zeros(n, r2, self.q, m_prompts),
            _zeros_sketch(n, r2, self.q, m_prompts, self.k, dt, dev) if self.k else {},
            self.mean_q.to(dev, dt),
            self._adam(engine, optimizer) if main else None,
            main,
            self.sketcher,
        )
        loss, margin = np.zeros(n, np.float32), np.zeros(n, np.float32)
        batches = probe.reshape(r2, -1)  # (2R, b) positions of each probe batch
        if n <= self.chunk_size:
            # one capture of the training set and the test prompts together; the probe
            # batches' sums come from the training points' rows
            built = engine.materialise(
                *_stack([fetch(self.train_set, range(n)), (self.xq, self.yq)])
            )
            counts = _counts(batches, np.arange(n), dt, dev)
            for u in built.units():
                g, tg = u.grads[:n], u.grads[n:]
                sums = counts @ g
                acc.test_terms(u.key, u.factor, sums, tg)
                acc.train_terms(u, g, sums, tg, 0, n)
            loss[:], margin[:] = built.loss[:n].cpu().numpy(), built.margin[:n].cpu().numpy()
            test_loss, test_margin = built.loss[n:], built.margin[n:]
        else:
            members = np.unique(batches)
            counts = _counts(batches, members, dt, dev)
            probes = engine.materialise(*fetch(self.train_set, members))
            tests = engine.materialise(self.xq, self.yq)
            for key in dict.fromkeys(probes.keys() + tests.keys()):
                pu, tu = probes.unit(key), tests.unit(key)
                like = pu if pu is not None else tu
                assert like is not None
                sums = counts @ _grads(pu, like, members.size)  # (2R, D_u)
                acc.test_terms(key, like.factor, sums, _grads(tu, like, m_prompts))
            for s0, xc, yc in chunks(self.train_set, self.chunk_size):
                s1 = s0 + xc.shape[0]
                built = engine.materialise(xc, yc)
                loss[s0:s1], margin[s0:s1] = built.loss.cpu().numpy(), built.margin.cpu().numpy()
                for u in built.units():
                    sums = counts @ _grads(probes.unit(u.key), u, members.size)
                    tg = _grads(tests.unit(u.key), u, m_prompts)
                    acc.train_terms(u, u.grads, sums, tg, s0, s1)
            test_loss, test_margin = tests.loss, tests.margin
        mean_q = acc.mean_q
        common = {
            "loss": loss,
            "margin": margin,
            "test_loss": _cpu(mean_q @ test_loss.to(dt)).float().numpy(),
            "test_margin": _cpu(mean_q @ test_margin.to(dt)).float().numpy(),
        }
        out = {0: self._record(acc.exact, common)}
        folded = acc.sketch
        for d in reversed(self.dims):  # each fold from the previous one: less to sum
            folded = {k: _fold(v, d) for k, v in folded.items()}
            out[d] = self._record(_products(folded), common)
        return out

    def _record(self, acc: dict[str, Tensor], common: dict[str, np.ndarray]) -> dict[str, Any]:
        f32 = np.float32
        r, n, q = self.r, self.n, self.q
        rec: dict[str, Any] = {
            "sqnorm": acc["sqnorm"].numpy().astype(f32),
            "ip": acc["ip"].numpy().astype(f32).reshape(r, 2, n),
            "probe_sqnorm": acc["probe_sqnorm"].numpy().astype(f32).reshape(r, 2),
            "gram": acc["gram"].numpy().astype(f32),
            "test_sqnorm": acc["test_sqnorm"].numpy().astype(f32),
            "test_ip": acc["test_ip"].numpy().astype(f32).reshape(r, 2, q),
            **common,
            "less": {
                "less_gram": acc["less_gram"].numpy().astype(f32),
                "less_sqnorm": acc["less_sqnorm"].numpy().astype(f32),
                "less_test_sqnorm": acc["less_test_sqnorm"].numpy().astype(f32),
            },
        }
        return rec

    def _adam(self, engine: GradEngine, optimizer: torch.optim.Optimizer | None) -> Any:
        """LESS's preconditioner from the optimiser's moments, or None (plain gradients)."""
        if self.precondition != "adam":
            return None
        assert optimizer is not None
        state = optimizer.state
        if any(p not in state or "exp_avg" not in state[p] for p in engine.params):
            raise ConfigError(
                "precondition 'adam' needs the main model's Adam(W) optimiser after at least "
                "one step, over the model's trainable parameters."
            )
        beta1, beta2 = optimizer.param_groups[0]["betas"]
        eps = float(optimizer.param_groups[0]["eps"])
        m = [state[p]["exp_avg"] for p in engine.params]
        v = [state[p]["exp_avg_sq"] for p in engine.params]

        def precondition(u: UnitGrads, g: Tensor) -> Tensor:
            m_u, v_u = u.layout(m), u.layout(v)
            # LESS: the update of a step from g alone, without bias correction
            return (beta1 * m_u + (1 - beta1) * g) / torch.sqrt(
                beta2 * v_u + (1 - beta2) * g * g + eps
            )

        return precondition

    def release(self) -> None:
        """Drop the models (the collected arrays stay): frees memory before other work."""
        self.models.clear()
        self.engines.clear()

    # ---- results ----------------------------------------------------------------------

    def arrays(self, dim: int = 0) -> dict[str, np.ndarray]:
        """The signals' arrays (exact, or sketched to ``dim``), checkpoints stacked."""
        recs = self.records.get(dim)
        if recs is None:
            raise ConfigError(f"sketch dimension {dim} was not collected; use one of {self.dims}.")
        if not recs:
            raise RunError("no checkpoint was recorded; call checkpoint() after training steps.")

        def stack(key: str, axis: int = 1) -> np.ndarray:
            return np.stack([r[key] for r in recs], axis=axis)

        out = {
            "lr": np.asarray(self.lr, np.float64),
            **{k: stack(k, a) for k, a in CHECKPOINT_AXIS.items() if k in recs[0]},
            "less_query": self.query_of.copy(),
            "test_labels": np.full(self.q, -1, np.int64),
            "test_index": np.arange(self.q, dtype=np.int64),
            "train_index": self.index.astype(np.int64),
            "labels": self.labels.astype(np.int64),
            "clean_labels": self.labels.astype(np.int64),
            "flip_mask": self.flip_mask.astype(bool),
            "checkpoint_epoch": np.asarray(self.steps, np.int64),
        }
        return out

    def signals(self, dim: int = 0, **meta: Any) -> Signals:
        """The collected :class:`Signals`: exact inner products (``dim=0``), or every inner
        product estimated from the count sketches of dimension ``dim``."""
        fields: dict[str, Any] = {
            "mode": "test",
            "task": self.task.name,
            "seeds": {"probe": self.seed},
            "timing": {"collect_s": round(self.collect_s, 3)},
            "projection": (
                {"dim": None}
                if dim == 0
                else {"dim": dim, "seed": self.sketch_seed, "folded_from": self.k}
            ),
            "less": {"precondition": self.precondition},
            "checkpoint_unit": "step",
        }
        fields.update(meta)
        return Signals(
            arrays=self.arrays(dim), meta=make_meta("signals", **fields), source="memory"
        )


class _Acc:
    """One model's accumulators at one checkpoint, filled unit by unit."""

    def __init__(
        self,
        exact: dict[str, Tensor],
        sketch: dict[str, Tensor],
        mean_q: Tensor,
        adam: Any,
        main: bool,
        sketcher: Sketcher | None,
    ) -> None:
        self.exact, self.sketch, self.mean_q = exact, sketch, mean_q
        self.adam, self.main, self.sketcher = adam, main, sketcher

    def test_terms(self, key: str, factor: Any, sums: Tensor, tg: Tensor) -> None:
        """The queries' and probe batches' quantities of one unit: ``sums`` ``(2R, D_u)``
        probe-batch gradient sums, ``tg`` ``(m', D_u)`` test prompts' gradients."""
        acc, qg = self.exact, self.mean_q @ tg  # (q, D_u)
        acc["test_sqnorm"] += _cpu((qg * qg).sum(1))
        acc["test_ip"] += _cpu(sums @ qg.T)
        acc["probe_sqnorm"] += _cpu((sums * sums).sum(1))
        acc["less_test_sqnorm"] += _cpu((tg * tg).sum(1))
        if self.sketcher is not None:
            for name, rows in (("probe", sums), ("query", qg), ("prompt", tg)):
                self.sketcher.sketch_dense(key, factor, rows, self.sketch[name].T)

    def train_terms(
        self, u: UnitGrads, g: Tensor, sums: Tensor, tg: Tensor, s0: int, s1: int
    ) -> None:
        """The training points' quantities of one unit: ``g`` ``(s1 - s0, D_u)``."""
        acc = self.exact
        acc["sqnorm"][s0:s1] += _cpu((g * g).sum(1))
        acc["ip"][:, s0:s1] += _cpu(sums @ g.T)
        acc["gram"][:, s0:s1] += _cpu((self.mean_q @ tg) @ g.T)
        sketch = self.sketcher.sketch_dense if self.sketcher is not None else None
        if sketch is not None:
            sketch(u.key, u.factor, g, self.sketch["g"][:, s0:s1].T)
        if self.main:
            pre = g if self.adam is None else self.adam(u, g)
            acc["less_gram"][:, s0:s1] += _cpu(tg @ pre.T)
            acc["less_sqnorm"][s0:s1] += _cpu((pre * pre).sum(1))
            if sketch is not None:
                sketch(u.key, u.factor, pre, self.sketch["pre"][:, s0:s1].T)


def _counts(
    batches: np.ndarray, points: np.ndarray, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``(2R, len(points))``: how often each of ``points`` (sorted positions) is in each
    probe batch of ``batches`` ``(2R, b)``; ``counts @ grads`` are the batches' sums."""
    rows = np.repeat(np.arange(batches.shape[0]), batches.shape[1])
    cols = np.searchsorted(points, batches.reshape(-1))
    out = torch.zeros(batches.shape[0], points.size, dtype=dtype, device=device)
    one = torch.ones(rows.size, dtype=dtype, device=device)
    return out.index_put_((torch.as_tensor(rows), torch.as_tensor(cols)), one, accumulate=True)


def _stack(parts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Token ids and targets of several sets in one batch, right-padded to the longest
    (padding changes no sample's loss; see fine_cli/llm/data.py)."""
    t = max(x.shape[1] for x, _ in parts)
    xs = [torch.nn.functional.pad(x, (0, t - x.shape[1]), value=0) for x, _ in parts]
    ys = [torch.nn.functional.pad(y, (0, t - y.shape[1]), value=IGNORE_INDEX) for _, y in parts]
    return torch.cat(xs), torch.cat(ys)


def _grads(u: UnitGrads | None, like: UnitGrads, rows: int) -> Tensor:
    """``u``'s gradients ``(rows, D_u)``, or zeros shaped as ``like``'s when ``u`` is None
    (the unit's output does not reach those points' loss)."""
    return u.grads if u is not None else like.grads.new_zeros(rows, like.grads.shape[1])


def _zeros(n: int, r2: int, q: int, m: int) -> dict[str, Tensor]:
    """float64 accumulators of one model's arrays at one checkpoint."""
    f64 = torch.float64
    shapes = {
        "sqnorm": (n,),
        "ip": (r2, n),
        "gram": (q, n),
        "test_sqnorm": (q,),
        "test_ip": (r2, q),
        "probe_sqnorm": (r2,),
        "less_gram": (m, n),
        "less_sqnorm": (n,),
        "less_test_sqnorm": (m,),
    }
    return {k: torch.zeros(shape, dtype=f64) for k, shape in shapes.items()}


def _zeros_sketch(
    n: int, r2: int, q: int, m: int, k: int, dtype: torch.dtype, device: torch.device
) -> dict[str, Tensor]:
    """Sketches (K wide, the model's dtype and device) of the training gradients, their
    preconditioned twins, the probe sums, the queries' and the test prompts' gradients."""
    rows = {"g": n, "pre": n, "probe": r2, "query": q, "prompt": m}
    # (K, rows): sketch_dense sums into rows of the transpose, the fast direction
    return {key: torch.zeros(k, r, dtype=dtype, device=device) for key, r in rows.items()}


def _cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu", torch.float64)


def _fold(a: Tensor, d: int) -> Tensor:
    """``(K', rows) -> (d, rows)``: bucket ``h`` goes to ``h mod d`` (d divides K'); a fold
    of a fold is the fold (``(h mod K') mod d = h mod d``)."""
    return a.reshape(-1, d, a.shape[1]).sum(0)


def _products(sk: dict[str, Tensor]) -> dict[str, Tensor]:
    """The accumulator arrays of ``_model`` estimated from sketches ``(d, rows)``."""
    g, pre, probe, query, prompt = (sk[k] for k in ("g", "pre", "probe", "query", "prompt"))
    out = {
        "sqnorm": (g * g).sum(0),
        "ip": probe.T @ g,
        "gram": query.T @ g,
        "test_sqnorm": (query * query).sum(0),
        "test_ip": probe.T @ query,
        "probe_sqnorm": (probe * probe).sum(0),
        "less_gram": prompt.T @ pre,
        "less_sqnorm": (pre * pre).sum(0),
        "less_test_sqnorm": (prompt * prompt).sum(0),
    }
    return {k: _cpu(v) for k, v in out.items()}
