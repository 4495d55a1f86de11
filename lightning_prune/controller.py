"""The adaptive pruning-ratio controller: pure Python, no torch. Signals in, the next action and ratio out.

Each pruning interval the controller sees the monitored loss, the mean gradient norm and the current sparsity, and
decides what to do with the ``ratio`` (the fraction of the *remaining* prunable weights to remove now). How the ratio
grows or shrinks is its pacing strategy's call (``pacing.py``: by the loss, by the last cut's damage, or by the
guard's verdicts); around it the controller

- undoes the last cut when the loss rose beyond ``rollback_tolerance`` (loss and damage pacing), slows down and
  pauses for ``cooldown`` intervals;
- never prunes on a NaN or infinite loss (it pauses);
- scales the ratio down in proportion when the gradient norm is far above its running mean;
- with ``target_sparsity``: keeps the run on time to reach it by the last interval (a floor), never overshooting it;
- keeps the ratio in ``[min_ratio, max_ratio]``.
"""

import math
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, TypedDict

from lightning_prune.pacing import PACE_BY, Evidence, Pacing, pacing
from lightning_prune.validation import check_bool, check_int, check_number

__all__ = ["PACE_BY", "Action", "Decision", "IntervalRecord", "RatioController", "changed_settings",
           "cuts_to_target", "restore_state", "unreachable_target"]  # fmt: skip
# A loss near zero must not turn noise into huge relative changes.
MIN_LOSS_SCALE = 1e-3
# Sparsity within this of the target counts as reached (cuts are whole weights).
TARGET_EPS = 1e-6


class Action(IntEnum):
    """What an interval did; the value is what ``pruning/action`` logs."""

    PRUNE = 0
    SLOW_DOWN = 1
    ROLLBACK = 2
    PAUSE = 3
    DONE = 4


class IntervalRecord(TypedDict):
    """One entry of ``RealTimePruningCallback.history`` (a plain dict): what one pruning interval saw and did."""

    epoch: int  # 0-based, like trainer.current_epoch
    step: int  # trainer.global_step at the decision
    loss: float  # the pacing loss over the interval
    grad_norm: float | None  # mean total gradient norm over the interval's steps
    grad_norm_max: float | None  # the largest total gradient norm of one of them
    ratio: float  # the share of the remaining prunable weights cut (0 when nothing was)
    pruned: int  # prunable weights cut (negative: restored by a rollback)
    sparsity: float  # after the action
    action: str  # Action's name in lower case: "prune", "slow_down", "rollback", "pause", "done"
    reason: str


@dataclass(frozen=True)
class Decision:
    """The controller's answer for one interval: ``ratio`` is the fraction of remaining weights to cut now."""

    action: Action
    ratio: float
    reason: str

    @property
    def prunes(self) -> bool:
        return self.action in (Action.PRUNE, Action.SLOW_DOWN) and self.ratio > 0


def cuts_to_target(sparsity: float, target: float, ratio: float) -> float:
    """How many cuts of ``ratio`` (of the remaining weights) take ``sparsity`` to ``target``; inf if never."""
    if sparsity >= target - TARGET_EPS:
        return 0.0
    if ratio <= 0:
        return math.inf
    if ratio >= 1:
        return 1.0
    per_cut = math.log1p(-ratio)
    if per_cut == 0:  # a ratio too small to move a float
        return math.inf
    return math.log((1 - target) / (1 - sparsity)) / per_cut


def unreachable_target(controller: "RatioController", min_layer_density: float, window: Any) -> list[str]:
    """Why ``controller.target_sparsity`` cannot be reached (empty when it can): ``min_layer_density`` keeps too much
    of every layer, or ``window`` (a :class:`~lightning_prune.schedule.PruningWindow`) holds too few intervals at
    ``max_ratio``. What to change is in each message."""
    target, max_ratio = controller.target_sparsity, controller.max_ratio
    problems = []
    if target is not None and target > 1 - min_layer_density:
        problems.append(
            f"target_sparsity={target} cannot be reached while min_layer_density={min_layer_density} keeps that "
            f"share of every layer (at most {1 - min_layer_density:.4f}). Lower `min_layer_density`."
        )
    intervals = window.intervals_in_window()
    if target is not None and intervals is not None and cuts_to_target(0.0, target, max_ratio) > intervals + 1e-9:
        reachable = 1 - (1 - max_ratio) ** intervals
        problems.append(
            f"target_sparsity={target} cannot be reached in the {intervals} pruning interval(s) before end_epoch="
            f"{window.end_epoch} at max_ratio={max_ratio} (at most {reachable:.4f}). Raise `max_ratio`, `end_epoch` "
            "or the Trainer's `max_epochs`."
        )
    return problems


@dataclass
class RatioController:
    """Decides, interval by interval, how fast to prune from the monitored loss and the gradient norm.

    Args:
        initial_ratio: The first ratio (the plan's 0.01: 1% of the remaining weights).
        min_ratio: Lower bound of the ratio.
        max_ratio: Upper bound of the ratio.
        growth: Factor applied to the ratio when the loss held.
        shrink: Factor applied to the ratio when the loss rose.
        loss_tolerance: Relative loss rise still counted as "held".
        rollback: Whether a large loss rise undoes the last cut.
        rollback_tolerance: Relative loss rise beyond which the last cut is undone.
        cooldown: Intervals to pause after a rollback.
        target_sparsity: Sparsity to reach by the last interval; None adapts under the loss guard only.
        grad_damping: The ratio is damped when the gradient norm exceeds this multiple of its running mean.
        grad_beta: Smoothing of the gradient norm's running mean (per interval).
        pace_by: ``"loss"``: grow while the loss holds; ``"damage"``: grow while the last cut's damage is small;
            ``"guard"``: a line search on the guard's verdicts (``pacing.py``), starting at ``max_ratio``.
        damage_tolerance: Paced by damage: the largest damage of a cut (relative squared change of the outputs on
            the probe, :class:`~lightning_prune.probe.DamageProbe`) counted as harmless.

    Example:
        >>> controller = RatioController(initial_ratio=0.1, growth=2.0, shrink=0.5, loss_tolerance=0.02)
        >>> controller.step(loss=1.0, grad_norm=1.0, sparsity=0.0, intervals_left=10)
        Decision(action=<Action.PRUNE: 0>, ratio=0.1, reason='first cut')
        >>> controller.step(loss=0.9, grad_norm=1.0, sparsity=0.1, intervals_left=9).ratio
        0.2
        >>> controller.step(loss=0.95, grad_norm=1.0, sparsity=0.28, intervals_left=8).action
        <Action.SLOW_DOWN: 1>
    """

    initial_ratio: float = 0.01
    min_ratio: float = 0.0
    max_ratio: float = 0.5
    growth: float = 1.5
    shrink: float = 0.5
    loss_tolerance: float = 0.02
    rollback: bool = True
    rollback_tolerance: float = 0.10
    cooldown: int = 1
    target_sparsity: float | None = None
    grad_damping: float = 2.0
    grad_beta: float = 0.5
    pace_by: str = "loss"
    damage_tolerance: float = 0.01
    # state
    ratio: float = field(init=False)
    reference_loss: float | None = field(default=None, init=False)
    grad_norm_mean: float | None = field(default=None, init=False)
    cooldown_left: int = field(default=0, init=False)
    last_cut_undoable: bool = field(default=False, init=False)
    loss_before_last_cut: float | None = field(default=None, init=False)
    sparsity_before_last_cut: float = field(default=0.0, init=False)
    floor: float = field(default=0.0, init=False)  # the smallest cut that keeps the target on time, this interval
    pacing: Pacing = field(init=False, repr=False, compare=False)  # the strategy `pace_by` names

    def __post_init__(self) -> None:
        self.validate()
        self.pacing = pacing(self.pace_by)
        first = self.pacing.first_ratio(self.initial_ratio, self.max_ratio)
        self.ratio = min(max(first, self.min_ratio), self.max_ratio)

    def validate(self) -> None:
        if self.target_sparsity is not None:
            check_number("target_sparsity", self.target_sparsity, 0, 1, high_open=True)
        check_number("initial_ratio", self.initial_ratio, 0, 1, low_open=True)
        check_number("min_ratio", self.min_ratio, 0, 1)
        check_number("max_ratio", self.max_ratio, 0, 1)
        if self.min_ratio > self.max_ratio:
            raise ValueError(f"`min_ratio` must be <= `max_ratio`, got {self.min_ratio} > {self.max_ratio}")
        check_number("growth", self.growth, 1)
        check_number("shrink", self.shrink, 0, 1, low_open=True)
        check_number("loss_tolerance", self.loss_tolerance, 0)
        check_bool("rollback", self.rollback)
        check_number("rollback_tolerance", self.rollback_tolerance, 0)
        check_int("cooldown", self.cooldown, 0)
        check_number("grad_damping", self.grad_damping, 1)
        check_number("grad_beta", self.grad_beta, 0, 1, high_open=True)
        check_number("damage_tolerance", self.damage_tolerance, 0)

    # -- the decision -------------------------------------------------------------------------------------------

    def step(
        self,
        loss: float,
        grad_norm: float | None,
        sparsity: float,
        intervals_left: int,
        resolution: float = 0.0,
        damage: float | None = None,
        kept: bool | None = None,
    ) -> Decision:
        """Decide this interval's action.

        Args:
            loss: The monitored loss at this interval.
            grad_norm: Mean total gradient norm over the interval (None or NaN: no damping).
            sparsity: Fraction of prunable weights that are zero now.
            intervals_left: Pruning intervals left, this one included (for the target floor).
            resolution: The smallest possible step of ``sparsity`` (one weight, or one channel): the target counts as
                reached within it.
            damage: With ``pace_by="damage"``, the damage of the last cut (None: no cut since the last decision).
            kept: With ``pace_by="guard"``, whether the guard kept the last cut (None: it judged none).
        """
        target = self.target_sparsity
        if target is not None and sparsity >= target - max(TARGET_EPS, resolution):
            self.last_cut_undoable = False
            return Decision(Action.DONE, 0.0, "target sparsity reached")
        if intervals_left <= 0:
            self.last_cut_undoable = False
            return Decision(Action.DONE, 0.0, "pruning window over")
        if not math.isfinite(loss):
            self.last_cut_undoable = False
            return Decision(Action.PAUSE, 0.0, f"non-finite loss ({loss}): not pruning on it")
        damping = self._update_grad_norm(grad_norm)
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.reference_loss = loss
            self.last_cut_undoable = False
            return Decision(Action.PAUSE, 0.0, "cooling down after a rollback")

        previous = self.reference_loss
        change = None if previous is None else (loss - previous) / max(abs(previous), MIN_LOSS_SCALE)
        rolls_back = self.pacing.rolls_back_on_loss and change is not None and change > self.rollback_tolerance
        if rolls_back and self._may_roll_back(sparsity, intervals_left):
            return self.reject_last_cut(f"loss rose {change:+.1%}: undoing the last cut")

        tolerance = self.damage_tolerance if self.pace_by == "damage" else self.loss_tolerance
        absorbed, reason = self.pacing.move(Evidence(change, damage, kept), tolerance)
        action = Action.SLOW_DOWN if absorbed is False else Action.PRUNE
        if absorbed is not None:
            self.ratio *= self.growth if absorbed else self.shrink
        if damping < 1:
            self.ratio *= damping
            reason += f"; gradient norm {1 / damping:.1f}x its mean: damped"
        cut = self._next_cut(sparsity, intervals_left)
        self.loss_before_last_cut = loss
        self.reference_loss = loss
        return Decision(action, cut, reason)

    def _next_cut(self, sparsity: float, intervals_left: int) -> float:
        self.ratio = min(max(self.ratio, self.min_ratio), self.max_ratio)
        cut = self._cut_ratio(sparsity, intervals_left)
        self.sparsity_before_last_cut = sparsity
        self.last_cut_undoable = cut > 0
        return cut

    def smaller_cut(self, ratio: float, damage: float) -> float | None:
        """With ``pace_by="damage"``, after a cut of ``ratio`` that did ``damage``: a smaller ratio to cut instead
        (``ratio * shrink``, never below the target's floor or ``min_ratio``) when it did harm, else None (keep it).

        Example:
            >>> controller = RatioController(pace_by="damage", damage_tolerance=0.05, initial_ratio=0.4)
            >>> controller.smaller_cut(0.4, damage=0.2), controller.smaller_cut(0.2, damage=0.01)
            (0.2, None)
        """
        if self.pace_by != "damage" or not damage > self.damage_tolerance:
            return None
        smaller = max(ratio * self.shrink, self.floor, self.min_ratio)
        if smaller >= ratio:  # the floor: this cut must be made, harm or not
            return None
        self.ratio = smaller  # the pace goes on from what was kept
        return smaller

    def reject_last_cut(self, reason: str) -> Decision:
        """Undo the last cut (the loss rose too far, or the guard refused it): slow down and pause for ``cooldown``."""
        self.ratio = max(self.ratio * self.shrink, self.min_ratio)
        self.cooldown_left = self.cooldown
        self.last_cut_undoable = False
        # the weights go back to where they were before the cut, and so does the loss to compare with
        self.reference_loss = self.loss_before_last_cut
        return Decision(Action.ROLLBACK, 0.0, reason)

    def _update_grad_norm(self, grad_norm: float | None) -> float:
        """Update the running mean; return the damping factor (1 = none) for this interval."""
        if grad_norm is None or not math.isfinite(grad_norm) or grad_norm <= 0:
            return 1.0
        mean = self.grad_norm_mean
        damping = 1.0
        if mean is not None and grad_norm > self.grad_damping * mean:
            damping = mean / grad_norm
        self.grad_norm_mean = grad_norm if mean is None else self.grad_beta * mean + (1 - self.grad_beta) * grad_norm
        return damping

    def _cut_ratio(self, sparsity: float, intervals_left: int) -> float:
        """The ratio to cut now: the paced ratio, raised to the target floor, never past the target."""
        cut = self.ratio
        target = self.target_sparsity
        self.floor = 0.0
        if target is None:
            return cut
        remaining_fraction = (1 - target) / (1 - sparsity)
        floor = 1 - remaining_fraction ** (1 / intervals_left)
        exact = 1 - remaining_fraction
        # the floor may exceed max_ratio only when the target cannot be reached at max_ratio: then max_ratio wins
        self.floor = min(floor, self.max_ratio, exact)
        cut = min(max(cut, self.floor), exact)
        # the floor sets the pace too: `ratio` is what was cut, unless the cut stopped at the target
        self.ratio = max(self.ratio, cut)
        return cut

    def _may_roll_back(self, sparsity: float, intervals_left: int) -> bool:
        """Rollback is allowed only with an undoable last cut and, with a target, while it stays reachable."""
        if not self.rollback or not self.last_cut_undoable:
            return False
        target = self.target_sparsity
        if target is None:
            return True
        # undoing loses this interval and the cooldown, and takes the sparsity back to before the cut
        available = intervals_left - 1 - self.cooldown
        needed = cuts_to_target(self.sparsity_before_last_cut, target, self.max_ratio)
        return available > 0 and needed <= available + 1e-9

    # -- persistence ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "pacing"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the controller's state. Its settings stay the ones it was built with: a resumed run may change
        them (a higher target, a slower pace) and means the new values; :func:`changed_settings` names what changed.
        """
        restore_state(self, state)


def changed_settings(settings: Any, state: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """A dataclass's constructor fields whose value saved in ``state`` differs from the current: name -> (saved, now).

    Example:
        >>> saved = RatioController(target_sparsity=0.5).state_dict()
        >>> changed_settings(RatioController(target_sparsity=0.8), saved)
        {'target_sparsity': (0.5, 0.8)}
    """
    return {f.name: (state[f.name], getattr(settings, f.name)) for f in fields(settings)
            if f.init and f.name in state and state[f.name] != getattr(settings, f.name)}  # fmt: skip


def restore_state(settings: Any, state: dict[str, Any]) -> None:
    """Set a dataclass's state fields (those not in its constructor) from ``state``; its settings stay as they are."""
    for f in fields(settings):
        if not f.init and f.name in state:
            setattr(settings, f.name, state[f.name])
