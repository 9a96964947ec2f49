"""The probe batches' second moments (ip2) of the collector, computed in the main pass,
against their slow twins: a separate Gram pass of each chunk with all probe points (how
they were first collected) and a loop of autograd calls, one per sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fine_cli.batches import TensorPairs
from fine_cli.collector import Collector
from fine_cli.grads import GradEngine

# float32 model: the Gram pass sums the same products in another order
F32_RTOL = 1e-5
# float64 model, float32 outputs, against float64 autograd loops
F64_RTOL, F64_ATOL = 1e-5, 1e-8


def squared_ips_by_gram(
    engine: GradEngine,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    r: int,
) -> np.ndarray:
    """(R, 2, c) sum over each probe batch of <g(z_i), g(z_j)>^2 for the c points of a chunk,
    from a second pass: the (c, 2Rb) Gram block of the chunk with all probe points."""
    xp = torch.cat([b[0] for b in batches])
    yp = torch.cat([b[1] for b in batches])
    gram = engine.gram(x, y, xp, yp).double()  # (c, 2Rb)
    sizes = [b[0].shape[0] for b in batches]
    sq = torch.stack([blk.pow(2).sum(dim=1) for blk in torch.split(gram, sizes, dim=1)])
    return sq.reshape(r, 2, -1).cpu().numpy()


def _mlp(dtype: torch.dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    # the first layer is wide enough for the Gram route, the head takes the vector route
    return nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 3)).to(dtype)


def _data(n: int, dtype: torch.dtype) -> TensorPairs:
    gen = torch.Generator().manual_seed(1)
    return TensorPairs(torch.randn(n, 30, generator=gen, dtype=dtype), torch.randint(0, 3, (n,)))


@pytest.mark.parametrize("chunk", [7, 64])
def test_ip2_equals_the_separate_gram_pass(chunk: int) -> None:
    model, data = _mlp(torch.float32), _data(60, torch.float32)
    col = Collector(
        model, None, data, probe_batch_size=5, probe_repeats=3, seed=2, chunk_size=chunk
    )
    col.checkpoint(lr=0.1)
    arrays = col.arrays()
    probe = arrays["probe_idx"][0]  # (R, 2, b)
    batches = [(data.x[probe[r, k]], data.y[probe[r, k]]) for r in range(3) for k in range(2)]
    want = squared_ips_by_gram(GradEngine(model), data.x, data.y, batches, 3)
    np.testing.assert_allclose(arrays["ip2"][0], want, rtol=F32_RTOL)


def test_ip2_does_not_depend_on_chunk_size_and_leaves_the_rest_as_it_was() -> None:
    model, data = _mlp(torch.float64), _data(50, torch.float64)
    runs = {}
    for chunk, moments in ((5, True), (50, True), (50, False)):
        col = Collector(
            model, None, data, probe_batch_size=6, probe_repeats=2, seed=4, chunk_size=chunk,
            moments=moments,
        )  # fmt: skip
        col.checkpoint(lr=0.1)
        runs[(chunk, moments)] = col.arrays()
    np.testing.assert_allclose(runs[(5, True)]["ip2"], runs[(50, True)]["ip2"], rtol=F64_RTOL)
    # the squares are extra: norms and inner products are those of a run without them
    for key in ("sqnorm", "ip", "loss", "margin", "probe_sqnorm"):
        np.testing.assert_array_equal(runs[(50, True)][key], runs[(50, False)][key], err_msg=key)
    assert "ip2" not in runs[(50, False)]


def test_ip2_of_a_conv_model_equals_an_autograd_loop() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)
    ).double()
    x = torch.randn(24, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (24,))
    col = Collector(model, None, TensorPairs(x, y), probe_batch_size=4, seed=5, chunk_size=10)
    col.checkpoint(lr=0.1)
    arrays = col.arrays()
    model.eval()
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    g = torch.stack(rows).numpy()
    probe = arrays["probe_idx"][0, 0]  # (2, b)
    want = np.stack([((g @ g[probe[k]].T) ** 2).sum(1) for k in range(2)])
    np.testing.assert_allclose(arrays["ip2"][0, 0], want, rtol=F64_RTOL, atol=F64_ATOL)


def test_squares_need_batches() -> None:
    engine = GradEngine(_mlp(torch.float32))
    data = _data(4, torch.float32)
    with pytest.raises(ValueError, match="squares"):
        engine.per_sample(data.x, data.y, squares=True)
