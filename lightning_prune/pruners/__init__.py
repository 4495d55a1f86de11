"""What the callback prunes with: single weights or whole channels, behind one interface.

The callback never asks which mode it runs in. It tells a pruner when a step happened (:meth:`Pruner.score`,
:meth:`Pruner.after_step`), when a decision is due (:meth:`Pruner.before_decision`, then :meth:`Pruner.prune` or
:meth:`Pruner.undo`) and when training ends (:meth:`Pruner.finish`); the pruner owns the masks and the saliency.

- :class:`UnstructuredPruner` masks single weights, ranked globally (``masks.py``).
- :class:`StructuredPruner` masks whole channels / hidden units with everything coupled to them, and removes them
  physically once a cut has survived an interval (``structured/``), rebuilding the optimizer (``optim.py``).
"""

from typing import Any

from lightning_prune.pruners.base import (
    SHRINK_WHEN,
    Budget,
    Mode,
    Pruner,
    ShrinkWhen,
    refuse_sharded_parameters,
)
from lightning_prune.pruners.unstructured import UnstructuredPruner

__all__ = ["BUDGETS", "PRUNER_MODES", "SHRINK_WHEN", "Budget", "Mode", "Pruner", "ShrinkWhen", "UnstructuredPruner",
           "make_pruner", "refuse_sharded_parameters"]  # fmt: skip

PRUNER_MODES = tuple(member.value for member in Mode)
BUDGETS = tuple(member.value for member in Budget)


def make_pruner(
    mode: str | Mode = Mode.UNSTRUCTURED, shrink_when: str | ShrinkWhen = ShrinkWhen.DURING,
    budget: str | Budget = Budget.WEIGHTS, **settings: Any,
) -> Pruner:  # fmt: skip
    """The pruner of ``mode``; ``settings`` are :class:`Pruner`'s. Every setting is checked here, at construction.

    Raises:
        ValueError: A setting outside its range, or a FLOPs budget in unstructured mode.
    """
    mode, shrink_when = Mode.parse("mode", mode), ShrinkWhen.parse("shrink_when", shrink_when)
    budget = Budget.parse("budget", budget)
    if mode == Mode.STRUCTURED:
        # torch-pruning and the channel groups: imported only for structured mode
        from lightning_prune.pruners.structured import StructuredPruner

        return StructuredPruner(shrink_when=shrink_when, budget=budget, **settings)
    if budget != Budget.WEIGHTS:
        raise ValueError(f"`budget`={budget.value!r} needs mode='structured' (whole channels, whose MACs really go); "
                         "unstructured mode counts weights")  # fmt: skip
    return UnstructuredPruner(**settings)
