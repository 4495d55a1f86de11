"""How the pruning ratio moves from one decision to the next: one small strategy per signal. Pure Python, no torch.

Each strategy reads one signal and says whether the last cut was absorbed (the ratio grows by ``growth``) or not (it
shrinks by ``shrink``); the :class:`~lightning_prune.controller.RatioController` around it clips the ratio, damps it
on gradient spikes and keeps a target on time.

- :class:`LossPacing` (``pace_by="loss"``): the monitored loss held from one interval to the next;
- :class:`DamagePacing` (``pace_by="damage"``): the last cut moved the outputs on a fixed probe by at most
  ``damage_tolerance`` (a harmful cut is also undone and tried smaller at once: :meth:`DamagePacing.smaller_cut`);
- :class:`GuardPacing` (``pace_by="guard"``, the default in guard mode): a line search for the sparsity the guard
  metric allows. The first cut is ``max_ratio`` of the weights; each cut the guard keeps makes the next larger (up to
  ``max_ratio``), each it refuses is undone and the next one smaller. The training loss, which mostly measures
  learning, is not read.
"""

import math
from dataclasses import dataclass
from typing import ClassVar

from lightning_prune.validation import check_choice

# What paces the ratio: the loss's change, the damage of the last cut on a fixed probe, or the guard's verdicts.
PACE_BY = ("loss", "damage", "guard")


@dataclass(frozen=True)
class Evidence:
    """What a strategy may read at a decision (None: not known this interval)."""

    loss_change: float | None = None  # relative change of the pacing loss since the last decision
    damage: float | None = None  # the last cut's damage on the probe
    kept: bool | None = None  # the guard's verdict on the last cut (None: no cut was judged)


class Pacing:
    """One way of pacing. ``rolls_back_on_loss``: whether a loss rise beyond ``rollback_tolerance`` undoes the last
    cut (the guard's refusals undo cuts in every pacing)."""

    name: ClassVar[str]
    rolls_back_on_loss: ClassVar[bool] = True

    def first_ratio(self, initial_ratio: float, max_ratio: float) -> float:
        return initial_ratio

    def move(self, evidence: Evidence, tolerance: float) -> tuple[bool | None, str]:
        """Whether the last cut was absorbed (True: grow, False: shrink, None: nothing to judge, the ratio stays),
        and why."""
        raise NotImplementedError


class LossPacing(Pacing):
    """Grow while the monitored loss holds (its relative change at most ``tolerance``: ``loss_tolerance``)."""

    name = "loss"

    def move(self, evidence: Evidence, tolerance: float) -> tuple[bool | None, str]:
        change = evidence.loss_change
        if change is None:
            return None, "first cut"
        if change > tolerance:
            return False, f"loss rose {change:+.1%}: slowing down"
        return True, f"loss held ({change:+.1%}): speeding up"


class DamagePacing(Pacing):
    """Grow after a cut whose damage was at most ``tolerance`` (``damage_tolerance``), shrink after a harmful one."""

    name = "damage"

    def move(self, evidence: Evidence, tolerance: float) -> tuple[bool | None, str]:
        damage = evidence.damage
        if damage is None or not math.isfinite(damage):
            first = evidence.loss_change is None
            return None, "first cut" if first else "no cut to judge since the last decision: pace kept"
        if damage > tolerance:
            return False, f"last cut's damage {damage:.3g} > {tolerance}: slowing down"
        return True, f"last cut's damage {damage:.3g}: speeding up"


class GuardPacing(Pacing):
    """A line search on the guard's verdicts: start at ``max_ratio`` and grow after a kept cut (up to ``max_ratio``);
    a refused cut shrinks the ratio where the guard refuses it (:meth:`RatioController.reject_last_cut`)."""

    name = "guard"
    rolls_back_on_loss = False

    def first_ratio(self, initial_ratio: float, max_ratio: float) -> float:
        return max_ratio

    def move(self, evidence: Evidence, tolerance: float) -> tuple[bool | None, str]:
        if evidence.kept is None:
            first = evidence.loss_change is None
            return None, "first cut" if first else "no cut judged since the last decision: pace kept"
        return True, "the guard kept the last cut: speeding up"


PACINGS: dict[str, type[Pacing]] = {p.name: p for p in (LossPacing, DamagePacing, GuardPacing)}


def pacing(name: str) -> Pacing:
    """The strategy named ``name``.

    Example:
        >>> pacing("damage").move(Evidence(loss_change=0.3, damage=0.001), tolerance=0.01)
        (True, "last cut's damage 0.001: speeding up")
        >>> pacing("guard").first_ratio(initial_ratio=0.01, max_ratio=0.5)
        0.5
    """
    check_choice("pace_by", name, PACE_BY)
    return PACINGS[name]()


def resolve_pace_by(pace_by: str | None, guard: str | None) -> str:
    """The pacing a callback uses: the one named, or by default the line search on the guard's verdicts when there
    is a guard metric, else the loss.

    Example:
        >>> resolve_pace_by(None, guard="val_acc"), resolve_pace_by(None, guard=None)
        ('guard', 'loss')
    """
    if pace_by is None:
        return "guard" if guard is not None else "loss"
    check_choice("pace_by", pace_by, PACE_BY)
    if pace_by == "guard" and guard is None:
        raise ValueError("`pace_by`='guard' searches by the guard's verdicts: it needs `guard=` a logged validation "
                         "metric (e.g. guard='val_acc')")  # fmt: skip
    return pace_by
