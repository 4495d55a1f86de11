"""Guard mode: a logged validation metric judges every cut. Pure Python, no torch.

A cut is *pending* until a validation run after it reports the guard's value. The cut is kept when that value is
within ``max_drop`` of the reference, else refused (the callback undoes it and slows down). The reference is the
guard's value before the first cut, moving with the metric whenever it improves, so a network that is still learning
raises the bar. After ``GUARD_PATIENCE`` refused cuts in a row no cut can be kept any longer: pruning ends. A guard
without a metric (the callback's default) keeps every cut and never waits.
"""

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from lightning_prune.controller import Action, Decision, IntervalRecord, RatioController, restore_state
from lightning_prune.validation import check_choice, check_name, check_number

GUARD_MODES = ("max", "min")
# refused cuts in a row after which pruning ends: each refusal also slows the pace (the controller's `shrink`), so
# by then smaller cuts were tried too
GUARD_PATIENCE = 3


class Verdict(Enum):
    """What the guard says at a decision."""

    NO_CUT = "no cut to judge"
    WAITING = "waiting for a validation run after the last cut"
    KEPT = "kept"
    REFUSED = "refused"


@dataclass
class Guard:
    """Judges cuts by a logged metric.

    Args:
        metric: The logged metric, e.g. ``"val_acc"``; None: no guard (every cut is kept).
        mode: ``"max"`` when higher is better, ``"min"`` when lower is.
        max_drop: How far the metric may fall below its reference (in the metric's units) for a cut to be kept.

    Example:
        >>> guard = Guard("val_acc", "max", max_drop=0.005)
        >>> guard.observe(0.980)
        >>> guard.verdict()  # nothing cut yet: the value becomes the reference
        <Verdict.NO_CUT: 'no cut to judge'>
        >>> guard.after_cut()
        >>> guard.verdict()
        <Verdict.WAITING: 'waiting for a validation run after the last cut'>
        >>> guard.observe(0.977)
        >>> guard.verdict()  # 0.003 below 0.980: kept
        <Verdict.KEPT: 'kept'>
        >>> guard.after_cut(); guard.observe(0.970); guard.verdict()
        <Verdict.REFUSED: 'refused'>
    """

    metric: str | None
    mode: str = "max"
    max_drop: float = 0.0
    reference: float | None = field(default=None, init=False)
    latest: float | None = field(default=None, init=False)  # from a validation run since the last cut or verdict
    pending: bool = field(default=False, init=False)
    refused_in_a_row: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        check_name("guard", self.metric, "a logged validation metric")  # None allowed: no guard
        check_choice("guard_mode", self.mode, GUARD_MODES)
        check_number("max_drop", self.max_drop, 0)

    @property
    def exhausted(self) -> bool:
        """No cut can be kept any longer: pruning should end."""
        return self.refused_in_a_row >= GUARD_PATIENCE

    def problems(self, validation_runs: bool) -> list[str]:
        """What keeps this guard from ever judging a cut, said at fit start (empty when nothing does)."""
        if self.metric is None or validation_runs:
            return []
        return [f"guard={self.metric!r} is read after validation, and this fit runs none (no val_dataloader, no "
                "validation_step, or limit_val_batches=0): nothing will be cut."]  # fmt: skip

    def observe(self, value: float) -> None:
        """A validation run logged ``value``. A non-finite value counts as the worst possible one."""
        self.latest = value if math.isfinite(value) else (-math.inf if self.mode == "max" else math.inf)

    def after_cut(self) -> None:
        """A cut was made: it waits for the next validation run (with a metric to judge it by)."""
        self.pending, self.latest = self.metric is not None, None

    def verdict(self) -> Verdict:
        """Judge the pending cut (if any) by the latest value, and move the reference when the metric improved."""
        if not self.pending:
            self._raise_reference()
            return Verdict.NO_CUT
        if self.latest is None:
            return Verdict.WAITING
        self.pending = False
        if self.broken(self.latest):
            self.refused_in_a_row += 1
            self.latest = None  # the value belongs to the refused weights
            return Verdict.REFUSED
        self.refused_in_a_row = 0
        self._raise_reference()
        return Verdict.KEPT

    def decision(self, controller: RatioController) -> Decision | None:
        """The guard's say at a decision, before the controller's: wait for a validation run after the last cut, or
        refuse it (the controller slows down and pauses; the caller undoes it). None: the controller decides."""
        value = self.latest
        verdict = self.verdict()
        if verdict == Verdict.WAITING:
            return Decision(Action.PAUSE, 0.0, f"waiting for `{self.metric}` after the last cut")
        if self.metric is not None and self.reference is None:
            return Decision(Action.PAUSE, 0.0, f"waiting for `{self.metric}` before the first cut")
        if verdict != Verdict.REFUSED:
            return None
        reason = (f"`{self.metric}` {value:.4g} is more than max_drop={self.max_drop:g} worse than "
                  f"{self.reference:.4g}: undoing the last cut")  # fmt: skip
        if self.exhausted:
            reason += f"; {GUARD_PATIENCE} cuts in a row refused: pruning ends"
        return controller.reject_last_cut(reason)

    def keeps_last_cut(self) -> bool:
        """At the end of training: whether the last cut may stay (kept, or nothing pending). A cut no validation run
        has judged does not: the final model is the sparsest one that kept the guard."""
        return not self.pending or self.verdict() == Verdict.KEPT

    def undone_at_end(self, epoch: int, step: int, restored: int, sparsity: float) -> IntervalRecord:
        """The history entry of a last cut undone at the end of training (no pacing loss: no interval ended), after
        :meth:`keeps_last_cut` said no: still pending when no validation run judged it."""
        why = "no validation run judged it" if self.pending else f"`{self.metric}` refused it"
        return {"epoch": epoch, "step": step, "loss": math.nan, "grad_norm": None, "ratio": 0.0, "pruned": -restored,
                "sparsity": sparsity, "action": Action.ROLLBACK.name.lower(),
                "reason": f"end of training: {why}, so the last cut was undone ({restored} weights back)"}  # fmt: skip

    def broken(self, value: float) -> bool:
        """Whether ``value`` is more than ``max_drop`` worse than the reference."""
        if self.reference is None:
            return False
        drop = self.reference - value if self.mode == "max" else value - self.reference
        return drop > self.max_drop

    def _raise_reference(self) -> None:
        value = self.latest
        if value is None or not math.isfinite(value):
            return
        better = max if self.mode == "max" else min
        self.reference = value if self.reference is None else better(self.reference, value)

    # -- persistence ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what the guard saw; its settings stay the ones it was built with. A reference and a pending cut
        measured by another metric mean nothing to this one, and refusals counted against another ``max_drop`` do not
        count against this one."""
        if (state.get("metric"), state.get("mode")) != (self.metric, self.mode):
            return
        restore_state(self, state)
        if state.get("max_drop") != self.max_drop:
            self.refused_in_a_row = 0
