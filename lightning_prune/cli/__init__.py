"""The ``lightning-prune`` command: every LightningCLI subcommand, plus ``compare`` and ``export``.

- ``main``: the console script, and the table of extra subcommands;
- ``app``: the LightningCLI subclass (``fit``, ``validate``, ``test``, ``predict``);
- ``wandb_mode``: W&B online / offline, decided before any run starts;
- ``progress``: a plain progress line where there is no terminal;
- ``export``: the ``export`` subcommand; ``compare`` lives in :mod:`lightning_prune.compare`, which builds on ``app``.

The names below are imported when first used, so that importing a submodule (``compare`` imports ``app``) runs
nothing of the others.
"""

import importlib
import importlib.util
import sys
from typing import Any

# what the command line needs beyond the callback's own dependencies: the `experiments` extra
EXPERIMENT_MODULES = ("jsonargparse", "datasets", "torchvision", "torchmetrics", "tokenizers", "wandb", "rich", "scipy",
                      "matplotlib", "pandas")  # fmt: skip

# public name -> the module that defines it
_PUBLIC = {
    "main": "lightning_prune.cli.main",
    "LightningPruneCLI": "lightning_prune.cli.app",
    "best_checkpoint_sparsity_note": "lightning_prune.cli.app",
    "run_directory": "lightning_prune.cli.app",
    "choose_wandb_mode": "lightning_prune.cli.wandb_mode",
}
__all__ = sorted([*_PUBLIC, "run"])


def run() -> None:
    """The ``lightning-prune`` console script: :func:`~lightning_prune.cli.main.main`, once it is sure the
    ``experiments`` extra is installed (``pip install lightning-prune`` installs the callback alone)."""
    missing = [name for name in EXPERIMENT_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        print(f"lightning-prune: error: the command line needs the `experiments` extra (missing: {', '.join(missing)})"
              ": pip install 'lightning-prune[experiments]'", file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    importlib.import_module("lightning_prune.cli.main").main()


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_prune.cli' has no attribute {name!r}")
