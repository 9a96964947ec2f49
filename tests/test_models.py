"""Architectures: output shapes, seeded initialisation, the CIFAR ResNet-18 layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fine_cli.config import ModelConfig
from fine_cli.errors import FineError
from fine_cli.models import MODELS, build_model, resnet18_cifar

# Published parameter count of the CIFAR ResNet-18 (3x3 stem, no max-pool), 10 classes.
RESNET18_CIFAR_PARAMS = 11_173_962
# The paper's MNIST MLP 784-500-10.
MLP_784_500_10_PARAMS = 784 * 500 + 500 + 500 * 10 + 10

CASES = [
    ("mlp", (1, 28, 28)),
    ("mlp", (20,)),
    ("small_cnn", (1, 8, 8)),
    ("small_cnn", (3, 32, 32)),
    ("resnet18_cifar", (3, 32, 32)),
    ("resnet18_cifar", (1, 8, 8)),
]


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_registry_covers_the_config_choices() -> None:
    from fine_cli.config import ARCHS

    assert set(MODELS) == set(ARCHS)


@pytest.mark.parametrize(("arch", "shape"), CASES)
def test_output_shape(arch: str, shape: tuple[int, ...]) -> None:
    model = build_model(ModelConfig(arch=arch), shape, n_classes=7, seed=0)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7) and out.dtype == torch.float32


@pytest.mark.parametrize("arch", ["mlp", "small_cnn", "resnet18_cifar"])
def test_seed_fixes_the_initial_weights(arch: str) -> None:
    cfg, shape = ModelConfig(arch=arch), (3, 16, 16)
    torch.manual_seed(1)
    a = _params(build_model(cfg, shape, 10, seed=4))
    torch.manual_seed(2)  # the global RNG must not matter
    b = _params(build_model(cfg, shape, 10, seed=4))
    c = _params(build_model(cfg, shape, 10, seed=5))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # Weight tensors differ (BatchNorm's ones and zeros are the same under any seed).
    assert all(not torch.equal(x, z) for x, z in zip(a, c, strict=True) if x.ndim > 1)


def test_global_rng_is_left_alone() -> None:
    torch.manual_seed(0)
    before = torch.get_rng_state()
    build_model(ModelConfig(arch="mlp"), (1, 28, 28), 10, seed=9)
    assert torch.equal(before, torch.get_rng_state())


def test_mlp_is_the_papers_784_500_10() -> None:
    model = build_model(ModelConfig(), (1, 28, 28), 10, seed=0)
    assert sum(p.numel() for p in model.parameters()) == MLP_784_500_10_PARAMS
    widths = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert widths == [500, 10]


def test_resnet18_cifar_parameter_count_and_layout() -> None:
    model = resnet18_cifar(10)
    assert sum(p.numel() for p in model.parameters()) == RESNET18_CIFAR_PARAMS
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    assert [len(s) for s in stages] == [2, 2, 2, 2]
    assert [s[-1].conv2.out_channels for s in stages] == [64, 128, 256, 512]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_has_no_sharing_and_no_in_place_ops() -> None:
    model = resnet18_cifar(10)
    params = list(model.parameters())
    assert len({id(p) for p in params}) == len(params)
    modules = list(model.modules())
    assert len({id(m) for m in modules}) == len(modules)
    assert all(not m.inplace for m in modules if isinstance(m, nn.ReLU))
    # Full backward hooks refuse in-place changes of a hooked module's output.
    seen: list[str] = []
    for name, m in model.named_modules():
        if not list(m.children()):
            m.register_full_backward_hook(lambda mod, gi, go, name=name: seen.append(name))
    model(torch.randn(2, 3, 32, 32, requires_grad=True)).sum().backward()
    assert len(seen) == sum(1 for m in modules if not list(m.children()))


@pytest.mark.parametrize(
    ("cfg", "shape", "match"),
    [
        (ModelConfig(arch="small_cnn"), (20,), "model.arch=mlp"),
        (ModelConfig(arch="resnet18_cifar"), (784,), "image inputs"),
        (ModelConfig(arch="mlp", hidden=[500, 0]), (1, 28, 28), "model.hidden"),
        (ModelConfig(arch="small_cnn", channels=[]), (1, 8, 8), "model.channels"),
    ],
)
def test_bad_shape_or_widths_are_fine_errors(
    cfg: ModelConfig, shape: tuple[int, ...], match: str
) -> None:
    with pytest.raises(FineError, match=match):
        build_model(cfg, shape, 10, seed=0)
