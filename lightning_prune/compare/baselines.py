"""The baseline arms: Lightning's ``ModelPruning`` on a fixed schedule, uniform (``modelpruning``) or cubic (``gmp``).

A baseline prunes to the pruned arm's target sparsity over the pruned arm's pruning epochs (the
:class:`~lightning_prune.schedule.PruningWindow`'s ``decision_epochs``, so every arm prunes on the same calendar).
The schedules are pure functions; ``baseline_callback`` builds the ModelPruning callback that applies one.
"""

from collections.abc import Mapping, Sequence

import torch
from lightning.pytorch.callbacks import ModelPruning

from lightning_prune.layers import prunable_weights

BASELINES = ("modelpruning", "gmp")


def uniform_amounts(target: float, steps: int) -> list[float]:
    """The same fraction of the remaining weights at every step, reaching ``target`` after ``steps``:
    ``1 - (1 - target) ** (1 / steps)`` (torch.prune's ``amount`` applies to the weights not pruned yet).

    Example:
        >>> [round(a, 4) for a in uniform_amounts(0.75, 2)]
        [0.5, 0.5]
    """
    if steps < 1:
        return []
    return [1 - (1 - target) ** (1 / steps)] * steps


def gmp_sparsities(target: float, steps: int) -> list[float]:
    """The cubic gradual-magnitude schedule, cumulative: ``s_t = target * (1 - (1 - t / steps) ** 3)``, t = 1..steps.

    Example:
        >>> [round(s, 4) for s in gmp_sparsities(0.9, 3)]
        [0.6333, 0.8667, 0.9]
    """
    return [target * (1 - (1 - t / steps) ** 3) for t in range(1, steps + 1)]


def amounts_from_sparsities(sparsities: Sequence[float]) -> list[float]:
    """Per-step fractions of the *remaining* weights that reach the cumulative ``sparsities``:
    ``(s_t - s_{t-1}) / (1 - s_{t-1})``.

    Example:
        >>> [round(a, 4) for a in amounts_from_sparsities([0.5, 0.75, 0.875])]
        [0.5, 0.5, 0.5]
    """
    amounts, previous = [], 0.0
    for sparsity in sparsities:
        amounts.append((sparsity - previous) / (1 - previous))
        previous = sparsity
    return amounts


class EpochAmounts:
    """``ModelPruning``'s ``amount`` callable: the fraction to prune at the end of each epoch, 0 elsewhere.

    Example:
        >>> amount = EpochAmounts({1: 0.5})
        >>> amount(0), amount(1)
        (0.0, 0.5)
    """

    def __init__(self, amounts: Mapping[int, float]) -> None:
        self.amounts = dict(amounts)

    def __call__(self, epoch: int) -> float:
        return self.amounts.get(epoch, 0.0)


def baseline_schedule(baseline: str, target: float, epochs: Sequence[int]) -> dict[int, float]:
    """Per-epoch amounts of a baseline: ``"modelpruning"`` uniform, ``"gmp"`` cubic, both to ``target`` at the end.

    Example:
        >>> {e: round(a, 4) for e, a in baseline_schedule("gmp", 0.9, [0, 1, 2]).items()}
        {0: 0.6333, 1: 0.6364, 2: 0.25}
    """
    if baseline == "modelpruning":
        amounts = uniform_amounts(target, len(epochs))
    elif baseline == "gmp":
        amounts = amounts_from_sparsities(gmp_sparsities(target, len(epochs)))
    else:
        raise ValueError(f"`baseline` must be one of {BASELINES}, got {baseline!r}")
    return dict(zip(epochs, amounts, strict=True))


def baseline_callback(
    module: torch.nn.Module,
    schedule: Mapping[int, float],
    parameters: list[str] | None = None,
    exclude: list[str] | None = None,
) -> ModelPruning:
    """Lightning's ModelPruning, global L1 unstructured over ``prunable_weights(module, parameters, exclude)`` (the
    weights the pruned arm prunes), pruning ``schedule[epoch]`` of the remaining weights at the end of each epoch, made
    permanent when training ends."""
    targets = []
    for name in prunable_weights(module, parameters, exclude):
        owner, _, attr = name.rpartition(".")
        targets.append((module.get_submodule(owner), attr))
    return ModelPruning(
        "l1_unstructured",
        parameters_to_prune=targets,
        use_global_unstructured=True,
        amount=EpochAmounts(schedule),
        use_lottery_ticket_hypothesis=False,
        make_pruning_permanent=True,
        verbose=0,
    )
