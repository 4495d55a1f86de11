"""LightningDataModules over Hugging Face ``datasets`` (the Hub, or local Parquet in the Hub schema)."""

from lightning_prune.data.cifar10 import CIFAR10DataModule
from lightning_prune.data.hub import DataSourceError
from lightning_prune.data.imdb import IMDBDataModule
from lightning_prune.data.mnist import MNISTDataModule

__all__ = ["CIFAR10DataModule", "DataSourceError", "IMDBDataModule", "MNISTDataModule"]
