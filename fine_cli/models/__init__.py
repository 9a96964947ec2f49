"""Model architectures and ``build_model(cfg.model, input_shape, n_classes, seed)``."""

from fine_cli.models.registry import MODELS, build_model
from fine_cli.models.resnet import resnet18_cifar

__all__ = ["MODELS", "build_model", "resnet18_cifar"]
