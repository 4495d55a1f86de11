"""lightning-prune: prune neural networks while they train, with PyTorch Lightning."""

from lightning_prune.callback import RealTimePruningCallback
from lightning_prune.checkpoints import load_pruned
from lightning_prune.data import CIFAR10DataModule, IMDBDataModule, MNISTDataModule
from lightning_prune.models import ClassificationModule
from lightning_prune.profiling import profile

__all__ = [
    "CIFAR10DataModule",
    "ClassificationModule",
    "IMDBDataModule",
    "MNISTDataModule",
    "RealTimePruningCallback",
    "load_pruned",
    "profile",
]
__version__ = "0.1.0"
