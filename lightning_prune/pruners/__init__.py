"""What the callback prunes with: single weights or whole channels, behind one interface.

The callback never asks which mode it runs in. It tells a pruner when a step happened (:meth:`Pruner.score`,
:meth:`Pruner.after_step`), when a decision is due (:meth:`Pruner.before_decision`, then :meth:`Pruner.prune` or
:meth:`Pruner.undo`) and when training ends (:meth:`Pruner.finish`); the pruner owns the masks and the saliency.

- :class:`UnstructuredPruner` masks single weights, ranked globally (``masks.py``).
- :class:`StructuredPruner` masks whole channels / hidden units with everything coupled to them, and removes them
  physically once a cut has survived an interval (``structured/``), rebuilding the optimizer (``optim.py``).
"""

from typing import Any

from lightning_prune.pruners.base import SHRINK_WHEN, Pruner, refuse_sharded_parameters
from lightning_prune.pruners.structured import BUDGETS, StructuredPruner
from lightning_prune.pruners.unstructured import UnstructuredPruner
from lightning_prune.validation import check_choice

__all__ = ["BUDGETS", "PRUNER_MODES", "SHRINK_WHEN", "Pruner", "StructuredPruner", "UnstructuredPruner", "make_pruner",
           "refuse_sharded_parameters"]  # fmt: skip


def make_pruner(mode: str, shrink_when: str, budget: str = "weights", **settings: Any) -> Pruner:
    check_choice("budget", budget, BUDGETS)
    if mode == "structured":
        return StructuredPruner(shrink_when=shrink_when, budget=budget, **settings)
    if budget != "weights":
        raise ValueError(f"`budget`={budget!r} needs mode='structured' (whole channels, whose MACs really go); "
                         "unstructured mode counts weights")  # fmt: skip
    return UnstructuredPruner(**settings)


PRUNER_MODES = ("unstructured", "structured")
