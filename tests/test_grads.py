"""The gradient engine against its slow twin: one autograd call per sample, flattened."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fine_cli.grads import GradEngine, PerSample
from fine_cli.grads.factors import EmbeddingFactor, Factor, MaterialFactor, OuterFactor

# Results are float32; with float64 models the only error left is that final rounding.
TOL_F64 = 1e-5
# float32 models: unfold + matmul and autograd's conv kernels sum in different orders.
TOL_F32 = 2e-4
# Count-sketch: the mean over seeds of <Sg, Sh> lies within this many standard errors
# of <g, h>, and one sketch of width SKETCH_K keeps ||g||^2 within SKETCH_NORM_TOL.
SKETCH_SE = 4.0
SKETCH_K = 4096
SKETCH_NORM_TOL = 0.25
CHUNKS = (1, 3, 10_000)
# Squares of inner products: their relative error is twice the inner products'.
SQUARED = 2.0

# torch notes that an even kernel under padding="same" pads a copy; that layer is on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")


# ---- the slow twin -------------------------------------------------------------------


def reference_grads(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``(n, d)`` per-sample gradients, one sample at a time, eval mode."""
    params = [p for p in model.parameters() if p.requires_grad]
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    rows = []
    for i in range(x.shape[0]):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(gs, params, strict=True)
                ]
            )
        )
    for m, flag in flags:
        m.training = flag
    return torch.stack(rows)


def reference_loss_margin(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        logits = model(x)
    for m, flag in flags:
        m.training = flag
    loss = F.cross_entropy(logits, y, reduction="none")
    margins = []
    for i in range(x.shape[0]):
        others = [logits[i, c] for c in range(logits.shape[1]) if c != y[i]]
        margins.append(logits[i, y[i]] - torch.stack(others).max())
    return loss, torch.stack(margins)


def random_vector(model: nn.Module, seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(p.shape, generator=gen, dtype=p.dtype)
        for p in model.parameters()
        if p.requires_grad
    ]


def flat(v: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in v])


def assert_close(got: Tensor, ref: Tensor, tol: float) -> None:
    """Relative to the largest reference entry: Gram entries near zero carry no scale."""
    ref = ref.to(torch.float64)
    scale = ref.abs().max().clamp_min(1e-12)
    err = (got.to(torch.float64) - ref).abs().max() / scale
    assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"


# ---- models --------------------------------------------------------------------------


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16, bias=False), nn.Tanh(), nn.Linear(16, 4)
    )


def small_cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=2, dilation=2, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, (3, 1), padding="same"),
        nn.ReLU(),
        # even kernel under 'same' pads asymmetrically: no formula, so the fallback takes it
        nn.Conv2d(8, 8, (1, 2), padding="same"),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )


class Block(nn.Module):
    """Residual block with in-place ops on hooked outputs (``+=``, ``ReLU(inplace)``)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.short(x)
        return self.relu(out)


def tiny_resnet() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        Block(4, 4, 1),
        Block(4, 8, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


class Scale(nn.Module):
    """A raw parameter: no formula covers it, so it goes to the fallback."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.linspace(0.5, 1.5, c))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.s


class Mixed(nn.Module):
    """Fallback parameters beside covered ones, a layer called twice, a frozen weight."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(12, 10)
        self.scale = Scale(10)
        self.twice = nn.Linear(10, 10)
        self.ln = nn.LayerNorm(10)
        self.frozen = nn.Linear(10, 10)
        self.frozen.weight.requires_grad_(False)
        self.head = nn.Linear(10, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.scale(self.inp(x)))
        h = torch.tanh(self.twice(torch.tanh(self.twice(h))))
        return self.head(self.frozen(self.ln(h)))


class Seq(nn.Module):
    """Embedding (with padding), a Linear over positions, LayerNorm, GroupNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 6, padding_idx=0)
        self.lin = nn.Linear(6, 8)
        self.ln = nn.LayerNorm(8)
        self.gn = nn.GroupNorm(2, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln(torch.tanh(self.lin(self.emb(x))))  # (n, T, 8)
        h = self.gn(h.transpose(1, 2)).mean(2)  # (n, 8)
        return self.head(h)


def warm_up(model: nn.Module, x: Tensor, y: Tensor, steps: int = 3) -> None:
    """A few training steps so BatchNorm running statistics are not the defaults."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def images(n: int, size: int, classes: int, seed: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 3, size, size, generator=gen, dtype=dtype),
        torch.randint(0, classes, (n,), generator=gen),
    )


def case(name: str) -> tuple[nn.Module, Tensor, Tensor, Tensor, Tensor, float]:
    """Model in train mode, batch a, batch b, tolerance."""
    gen = torch.Generator().manual_seed(3)
    if name == "mlp":
        model = mlp().double()
        xa, xb = (
            torch.randn(7, 20, generator=gen).double(),
            torch.randn(5, 20, generator=gen).double(),
        )
        ya, yb = torch.randint(0, 4, (7,), generator=gen), torch.randint(0, 4, (5,), generator=gen)
        tol = TOL_F64
    elif name == "cnn":
        model = small_cnn().double()
        xa, ya = images(6, 9, 5, 4, torch.float64)
        xb, yb = images(4, 9, 5, 5, torch.float64)
        warm_up(model, *images(16, 9, 5, 6, torch.float64))
        tol = TOL_F64
    elif name == "resnet_f32":
        model = tiny_resnet()
        xa, ya = images(5, 8, 3, 4, torch.float32)
        xb, yb = images(4, 8, 3, 5, torch.float32)
        warm_up(model, *images(16, 8, 3, 6, torch.float32))
        tol = TOL_F32
    elif name == "mixed":
        torch.manual_seed(5)
        model = Mixed().double()
        xa, xb = (
            torch.randn(6, 12, generator=gen).double(),
            torch.randn(4, 12, generator=gen).double(),
        )
        ya, yb = torch.randint(0, 3, (6,), generator=gen), torch.randint(0, 3, (4,), generator=gen)
        tol = TOL_F64
    else:
        assert name == "seq"
        torch.manual_seed(6)
        model = Seq().double()
        xa, xb = (
            torch.randint(0, 7, (6, 5), generator=gen),
            torch.randint(0, 7, (4, 5), generator=gen),
        )
        ya, yb = torch.randint(0, 3, (6,), generator=gen), torch.randint(0, 3, (4,), generator=gen)
        tol = TOL_F64
    model.train()
    return model, xa, ya, xb, yb, tol


CASES = ("mlp", "cnn", "resnet_f32", "mixed", "seq")


# ---- the checks ----------------------------------------------------------------------


def check_engine(
    model: nn.Module, xa: Tensor, ya: Tensor, xb: Tensor, yb: Tensor, tol: float
) -> None:
    dtype = next(model.parameters()).dtype
    ga = reference_grads(model, xa, ya).to(torch.float64)
    gb = reference_grads(model, xb, yb).to(torch.float64)
    loss, margin = reference_loss_margin(model, xa, ya)
    batch_sum = [
        t.detach().clone()
        for t in torch.autograd.grad(
            F.cross_entropy(model.eval()(xb), yb, reduction="sum"),
            [p for p in model.parameters() if p.requires_grad],
        )
    ]
    model.train()
    vectors = [random_vector(model, 10), random_vector(model, 11), batch_sum]
    v_flat = torch.stack([flat(v) for v in vectors]).to(torch.float64)

    grads_before = {}
    for i, p in enumerate(model.parameters()):
        p.grad = torch.full_like(p, float(i))
        grads_before[i] = p.grad.clone()
    buffers_before = {k: b.clone() for k, b in model.named_buffers()}

    for chunk in CHUNKS:
        engine = GradEngine(model, chunk_size=chunk)
        assert_close(flat(engine.batch_grad_sum(xb, yb)), gb.sum(0), tol)
        out = engine.per_sample(xa, ya, vectors)
        assert isinstance(out, PerSample)
        assert out.sqnorm.dtype == torch.float32 and out.ips.shape == (3, xa.shape[0])
        assert_close(out.loss, loss, tol)
        assert_close(out.margin, margin, tol)
        assert_close(out.sqnorm, (ga * ga).sum(1), tol)
        assert_close(out.ips, v_flat @ ga.T, tol)
        assert_close(engine.gram(xa, ya, xb, yb), ga @ gb.T, tol)
        # batches stand for their gradient sums; small batches take the Gram route
        probes = [(xb, yb), (xb[:2], yb[:2])]
        mixed = engine.per_sample(xa, ya, vectors[:1], batches=probes)
        want = torch.stack([v_flat[0], gb.sum(0), gb[:2].sum(0)]) @ ga.T
        assert_close(mixed.ips, want, tol)
        assert_close(mixed.sqnorm, (ga * ga).sum(1), tol)
        # each batch's squared inner products, from the same pass; the rest unchanged
        squared = engine.per_sample(xa, ya, vectors[:1], batches=probes, squares=True)
        assert mixed.squares is None and squared.squares is not None
        assert torch.equal(squared.ips, mixed.ips) and torch.equal(squared.sqnorm, mixed.sqnorm)
        block = gb @ ga.T  # (b, n)
        want_sq = torch.stack([(block**2).sum(0), (block[:2] ** 2).sum(0)])
        assert_close(squared.squares, want_sq, SQUARED * tol)
        bare = engine.per_sample(xa, ya)  # no vectors: other per-layer routes for conv
        assert bare.ips.shape == (0, xa.shape[0])
        assert_close(bare.sqnorm, (ga * ga).sum(1), tol)

    assert model.training and all(m.training for m in model.modules())
    for k, b in model.named_buffers():
        assert torch.equal(b, buffers_before[k]), f"buffer {k} changed"
    for i, p in enumerate(model.parameters()):
        assert p.grad is not None and torch.equal(p.grad, grads_before[i])
    assert dtype == next(model.parameters()).dtype


@pytest.mark.parametrize("name", CASES)
def test_matches_per_sample_autograd(name: str) -> None:
    check_engine(*case(name))


def test_wide_linear_layers_take_the_gram_route_for_batches() -> None:
    from fine_cli.grads.engine import ProbeBatches

    model = mlp().double()
    x, y = torch.randn(30, 20, dtype=torch.float64), torch.randint(0, 4, (30,))
    engine = GradEngine(model, chunk_size=8)
    probe = ProbeBatches(engine, [(x[:2], y[:2])])
    cap = engine._capture(x[:8], y[:8])
    routes = [probe.by_gram(j, f) for j, f in enumerate(cap.factors) if f is not None]
    assert any(routes)  # 2 x (21 + 32) < 21 x 32: the first layer goes by the Gram block


@pytest.mark.skipif(
    importlib.util.find_spec("fine_cli.models.resnet") is None,
    reason="fine_cli.models.resnet is not available",
)
def test_resnet18_cifar() -> None:
    from fine_cli.models.resnet import resnet18_cifar

    torch.manual_seed(0)
    classes = 4
    model = resnet18_cifar(n_classes=classes)
    warm_up(model, *images(8, 8, classes, 6, torch.float32), steps=1)
    xa, ya = images(3, 8, classes, 4, torch.float32)
    xb, yb = images(2, 8, classes, 5, torch.float32)
    ga, gb = reference_grads(model, xa, ya).double(), reference_grads(model, xb, yb).double()
    engine = GradEngine(model, chunk_size=2)
    v = random_vector(model, 1)
    out = engine.per_sample(xa, ya, [v])
    assert_close(out.sqnorm, (ga * ga).sum(1), TOL_F32)
    assert_close(out.ips[0], ga @ flat(v).double(), TOL_F32)
    assert_close(engine.gram(xa, ya, xb, yb), ga @ gb.T, TOL_F32)


def test_loop_fallback_matches_vmap() -> None:
    """Models vmap cannot trace get the per-sample loop; both give the same numbers."""
    model, xa, ya, _, _, tol = case("mixed")
    engine = GradEngine(model)
    fast = engine.per_sample(xa, ya)
    assert engine._fallback is not None
    engine._fallback.use_vmap = False
    slow = engine.per_sample(xa, ya)
    assert_close(slow.sqnorm, fast.sqnorm, tol)


def test_item_in_forward_uses_loop() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.s = nn.Parameter(torch.ones(3))

        def forward(self, x: Tensor) -> Tensor:
            h = self.lin(x)
            return h * self.s if float(h.detach().sum()) > -1e9 else h

    torch.manual_seed(0)
    model = Gate().double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    g = reference_grads(model, x, y)
    engine = GradEngine(model)
    assert_close(engine.per_sample(x, y).sqnorm, (g * g).sum(1), TOL_F64)
    assert engine._fallback is not None and not engine._fallback.use_vmap


def test_memory_budget_picks_chunks() -> None:
    model, xa, ya, _, _, tol = case("cnn")
    g = reference_grads(model, xa, ya).double()
    engine = GradEngine(model, memory_budget_mb=1)
    out = engine.per_sample(xa, ya)
    assert 1 <= engine.chunk_size < 2048
    assert_close(out.sqnorm, (g * g).sum(1), tol)


def test_batchnorm_without_running_stats_is_refused() -> None:
    with pytest.raises(ValueError, match="track_running_stats"):
        GradEngine(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False)))


def test_bad_vector_names_the_parameter() -> None:
    model = mlp()
    with pytest.raises(ValueError, match="vectors\\[0\\]"):
        GradEngine(model).per_sample(torch.randn(2, 20), torch.zeros(2, dtype=torch.long), [[]])


def test_float_inputs_follow_model_dtype() -> None:
    model = mlp().double()
    out = GradEngine(model).per_sample(torch.randn(3, 20), torch.zeros(3, dtype=torch.long))
    assert out.sqnorm.dtype == torch.float32 and torch.isfinite(out.sqnorm).all()


# ---- projection ----------------------------------------------------------------------


def test_projection_is_reproducible_and_keeps_norms() -> None:
    model, xa, ya, _, _, _ = case("cnn")
    g = reference_grads(model, xa, ya).double()
    engine = GradEngine(model, chunk_size=4)
    p1 = engine.project(xa, ya, 64, seed=7)
    assert p1.shape == (xa.shape[0], 64) and p1.dtype == torch.float32
    assert torch.equal(p1, engine.project(xa, ya, 64, seed=7))
    assert torch.equal(p1, GradEngine(model, chunk_size=1).project(xa, ya, 64, seed=7))
    assert not torch.equal(p1, engine.project(xa, ya, 64, seed=8))

    # averaged over seeds, sketched inner products approach the true ones
    true = g @ g.T
    draws = torch.stack(
        [(lambda p: p @ p.T)(engine.project(xa, ya, 64, seed=s).double()) for s in range(40)]
    )
    se = draws.std(0) / draws.shape[0] ** 0.5
    assert ((draws.mean(0) - true).abs() <= SKETCH_SE * se + 1e-6 * true.abs().max()).all()

    # one wide sketch keeps squared norms close (JL)
    wide = engine.project(xa, ya, SKETCH_K, seed=1).double()
    rel = ((wide * wide).sum(1) - (g * g).sum(1)).abs() / (g * g).sum(1)
    assert (rel <= SKETCH_NORM_TOL).all()


def positive_factors() -> list[Factor]:
    """Gradients with all-positive entries: a sign or bucket bias would not average out."""
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(3, 2, 5, generator=gen, dtype=torch.float64)  # (n, P, d_in)
    d = torch.rand(3, 2, 4, generator=gen, dtype=torch.float64)  # (n, P, d_out)
    outer = OuterFactor(
        3, 2, 5, 4, lambda s0, s1: (a[s0:s1], d[s0:s1]), ("weight",), a.dtype, a.device
    )
    material = MaterialFactor(torch.rand(3, 30, generator=gen, dtype=torch.float64), ("w",))
    emb = EmbeddingFactor(
        torch.tensor([[1, 2, 1], [0, 3, 3], [2, 2, 2]]),
        torch.rand(3, 3, 4, generator=gen, dtype=torch.float64),
        num_rows=5,
    )
    return [outer, material, emb]


def explicit(f: Factor) -> Tensor:
    """``(n, d)`` per-sample gradients of a factor, built the slow way."""
    if isinstance(f, OuterFactor):
        a, d = f.rows(0, f.n)
        return torch.stack(
            [
                sum(torch.outer(d[i, p], a[i, p]) for p in range(f.positions)).reshape(-1)
                for i in range(f.n)
            ]
        )
    if isinstance(f, EmbeddingFactor):
        w = torch.zeros(f.n, f.num_rows, f.delta.shape[2], dtype=f.dtype)
        for i in range(f.n):
            for t in range(f.idx.shape[1]):
                w[i, f.idx[i, t]] += f.delta[i, t]
        return w.reshape(f.n, -1)
    assert isinstance(f, MaterialFactor)
    return f.grads


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("build", [False, True])
def test_sketch_is_unbiased(which: int, build: bool) -> None:
    from fine_cli.grads import sketch

    f = positive_factors()[which]
    g = explicit(f)
    true = g @ g.T
    old = sketch.PREFER_BUILD
    try:
        sketch.PREFER_BUILD = build
        draws = torch.stack(
            [(lambda p: p @ p.T)(sketch.Sketcher(8, s).sketch("layer", f)) for s in range(400)]
        )
    finally:
        sketch.PREFER_BUILD = old
    se = draws.std(0) / draws.shape[0] ** 0.5
    assert ((draws.mean(0) - true).abs() <= SKETCH_SE * se).all()


def test_projection_paths_agree() -> None:
    """The FFT route for Linear/Conv and the build-then-hash route give one sketch."""
    from fine_cli.grads import sketch

    model, xa, ya, _, _, _ = case("cnn")
    engine = GradEngine(model)
    old = sketch.PREFER_BUILD
    try:
        sketch.PREFER_BUILD = False
        a = engine.project(xa, ya, 32, seed=3)
        sketch.PREFER_BUILD = True
        b = engine.project(xa, ya, 32, seed=3)
    finally:
        sketch.PREFER_BUILD = old
    assert_close(b, a.double(), TOL_F64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    model, xa, ya, xb, yb, _ = case("resnet_f32")
    cpu = GradEngine(model, chunk_size=3)
    gpu = GradEngine(copy.deepcopy(model).cuda(), chunk_size=3)
    v = random_vector(model, 0)
    out_c = cpu.per_sample(xa, ya, [v])
    out_g = gpu.per_sample(xa.cuda(), ya.cuda(), [[t.cuda() for t in v]])
    assert out_g.sqnorm.is_cuda
    assert_close(out_g.sqnorm.cpu(), out_c.sqnorm.double(), TOL_F32)
    assert_close(out_g.ips.cpu(), out_c.ips.double(), TOL_F32)
    gram_g = gpu.gram(xa.cuda(), ya.cuda(), xb.cuda(), yb.cuda()).cpu()
    assert_close(gram_g, cpu.gram(xa, ya, xb, yb).double(), TOL_F32)
    assert_close(
        gpu.project(xa.cuda(), ya.cuda(), 16, 0).cpu(), cpu.project(xa, ya, 16, 0).double(), TOL_F32
    )


def test_mlp_models_copy_unaffected() -> None:
    """The engine leaves parameters bit-identical (no stray in-place updates)."""
    model, xa, ya, xb, yb, _ = case("mixed")
    before = copy.deepcopy(model.state_dict())
    engine = GradEngine(model, chunk_size=2)
    engine.per_sample(xa, ya, [random_vector(model, 0)])
    engine.gram(xa, ya, xb, yb)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
