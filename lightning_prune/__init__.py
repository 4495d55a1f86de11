"""lightning-prune: prune neural networks while they train, with PyTorch Lightning.

The public names are imported when first used, so that light submodules (``lightning_prune.compare.stats``,
``lightning_prune.controller``) can be imported without torch or Lightning.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_prune.callback import RealTimePruningCallback
    from lightning_prune.checkpoints import load_pruned
    from lightning_prune.data import CIFAR10DataModule, IMDBDataModule, MNISTDataModule
    from lightning_prune.models import ClassificationModule
    from lightning_prune.profiling import profile

# public name -> the module that defines it
_PUBLIC = {
    "RealTimePruningCallback": "lightning_prune.callback",
    "load_pruned": "lightning_prune.checkpoints",
    "CIFAR10DataModule": "lightning_prune.data",
    "IMDBDataModule": "lightning_prune.data",
    "MNISTDataModule": "lightning_prune.data",
    "ClassificationModule": "lightning_prune.models",
    "profile": "lightning_prune.profiling",
}
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


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # once imported, a plain attribute
        return value
    raise AttributeError(f"module 'lightning_prune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
