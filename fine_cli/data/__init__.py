"""Datasets, random subsets and label noise: ``load_data(cfg.data)`` is the entry point."""

from fine_cli.data.loading import LoadedData, Split, load_data
from fine_cli.data.noise import flip_labels
from fine_cli.data.sources import DATASETS, RawData

__all__ = ["DATASETS", "LoadedData", "RawData", "Split", "flip_labels", "load_data"]
