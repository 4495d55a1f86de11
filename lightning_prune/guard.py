"""Guard mode: a logged validation metric judges every cut. Pure Python, no torch.

A cut is *pending* until a validation run after it reports the guard's value. The cut is kept when that value is
within ``max_drop`` of the reference, beyond the metric's own noise, else refused (the callback undoes it and slows
down). The reference is the guard's value before the first cut, moving with the metric whenever it improves, so a
network that is still learning raises the bar. After ``GUARD_PATIENCE`` refused cuts in a row no cut can be kept any
longer: pruning ends. A guard without a metric (the callback's default) keeps every cut and never waits.

The noise is how far the metric moves between validation runs with no cut in between: before the first cut, and
after a refused cut was undone (the next run sees the model without it). With ``NOISE_MIN_MOVES`` such moves known,
a cut is refused only when its drop exceeds ``max_drop`` by more than ``NOISE_Z`` times their typical size: a metric
that moves by itself (a small validation set, a network still unsettled) does not stop pruning on its movement, and
the guard says when ``max_drop`` is below what it can tell from that movement.
"""

import math
import statistics
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from lightning_prune.controller import Action, Decision, IntervalRecord, RatioController, restore_state
from lightning_prune.validation import check_choice, check_name, check_number

GUARD_MODES = ("max", "min")
# refused cuts in a row after which pruning ends: each refusal also slows the pace (the controller's `shrink`), so
# by then smaller cuts were tried too
GUARD_PATIENCE = 3
# moves of the metric without a cut in between, before their typical size is trusted as the noise; the newest
# NOISE_WINDOW are kept (the noise of a network that settles shrinks)
NOISE_MIN_MOVES = 2
NOISE_WINDOW = 16
# a search by the guard's verdicts with fewer validation runs than this in its window is said to be short
FEW_VALIDATION_RUNS = 5
# a drop beyond max_drop counts when it exceeds this many noise scales (one-sided, about 2% for normal noise)
NOISE_Z = 2.0
# the median absolute value of a normal variable, in standard deviations
_MEDIAN_ABS_NORMAL = 0.6745


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
    accepted: float | None = field(default=None, init=False)  # the last value of a model with no cut on probation
    moves: list[float] = field(default_factory=list, init=False)  # its moves between runs without a cut between

    @property
    def noise(self) -> float | None:
        """The typical move of the metric between two validation runs with no cut between (a standard deviation,
        from the median absolute move: one odd run barely counts); None until ``NOISE_MIN_MOVES`` are known.

        Example:
            >>> guard = Guard("val_acc", max_drop=0.01)
            >>> for value in (0.80, 0.86, 0.80):  # no cut yet: every move is the metric's own
            ...     guard.observe(value)
            ...     _ = guard.verdict()
            >>> round(guard.noise, 4)
            0.089
        """
        if len(self.moves) < NOISE_MIN_MOVES:
            return None
        return statistics.median(abs(m) for m in self.moves) / _MEDIAN_ABS_NORMAL

    @property
    def tolerance(self) -> float:
        """How far below the reference a value may be for the cut before it to be kept: ``max_drop``, plus
        ``NOISE_Z`` noise scales once the noise is known."""
        return self.max_drop + NOISE_Z * (self.noise or 0.0)

    def __post_init__(self) -> None:
        check_name("guard", self.metric, "a logged validation metric")  # None allowed: no guard
        check_choice("guard_mode", self.mode, GUARD_MODES)
        check_number("max_drop", self.max_drop, 0)

    @property
    def exhausted(self) -> bool:
        """No cut can be kept any longer: pruning should end."""
        return self.refused_in_a_row >= GUARD_PATIENCE

    def problems(self, validation_runs: bool, runs_left: int | None = None, max_ratio: float = 0.5) -> list[str]:
        """What keeps this guard from judging cuts, or a search by its verdicts from going far, said at fit start
        (empty when nothing does). ``runs_left``: the validation runs in the pruning window, when one cut is judged
        per run (``pace_by="guard"``)."""
        if self.metric is None:
            return []
        if not validation_runs:
            return [f"guard={self.metric!r} is read after validation, and this fit runs none (no val_dataloader, no "
                    "validation_step, or limit_val_batches=0): nothing will be cut."]  # fmt: skip
        if runs_left is not None and runs_left < FEW_VALIDATION_RUNS:
            reach = 1 - (1 - max_ratio) ** max(runs_left, 0)
            return [f"guard={self.metric!r} judges one cut per validation run, and the pruning window holds about "
                    f"{runs_left}: even if every cut is kept, pruning stops near {reach:.1%} sparsity. Validate more "
                    "often (e.g. Trainer(val_check_interval=0.25)) for a longer search."]  # fmt: skip
        return []

    def observe(self, value: float) -> None:
        """A validation run logged ``value``. A non-finite value counts as the worst possible one. With no cut on
        probation, its move from the last such run is the metric's own: a sample of the noise."""
        self.latest = value if math.isfinite(value) else (-math.inf if self.mode == "max" else math.inf)
        if not self.pending and self.accepted is not None and math.isfinite(value):
            self.moves = [*self.moves, value - self.accepted][-NOISE_WINDOW:]

    def noise_problem(self) -> str | None:
        """What to say once, when the noise is first known and ``max_drop`` is below the drop it lets the guard tell
        from the metric's own movement (None otherwise)."""
        noise = self.noise
        if noise is None or NOISE_Z * noise <= self.max_drop:
            return None
        return (
            f"`{self.metric}` moves by about {noise:.3g} between validation runs with no cut between (from "
            f"{len(self.moves)} runs), so the guard cannot tell a drop smaller than about {NOISE_Z * noise:.3g} "
            f"from that movement; max_drop={self.max_drop:g} is below it, and cuts are refused only when they "
            f"cost more than {self.tolerance:.3g}. To judge max_drop itself, validate on more examples, validate "
            "more often (the Trainer's `val_check_interval`: less training between runs), or raise `max_drop`."
        )

    def after_cut(self) -> None:
        """A cut was made: it waits for the next validation run (with a metric to judge it by)."""
        self.pending, self.latest = self.metric is not None, None

    def verdict(self) -> Verdict:
        """Judge the pending cut (if any) by the latest value, and move the reference when the metric improved."""
        if not self.pending:
            self._accept()
            return Verdict.NO_CUT
        if self.latest is None:
            return Verdict.WAITING
        self.pending = False
        if self.broken(self.latest):
            self.refused_in_a_row += 1
            self.latest = None  # the value belongs to the refused weights
            return Verdict.REFUSED
        self.refused_in_a_row = 0
        self._accept()
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
        beyond = f"max_drop={self.max_drop:g}"
        if self.noise is not None:
            beyond = f"{self.tolerance:.3g} ({beyond} + {NOISE_Z:g} x its noise {self.noise:.3g})"
        reason = f"`{self.metric}` {value:.4g} is more than {beyond} worse than {self.reference:.4g}"
        reason += ": undoing the last cut"
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
        return {"epoch": epoch, "step": step, "loss": math.nan, "grad_norm": None, "grad_norm_max": None, "ratio": 0.0,
                "pruned": -restored,
                "sparsity": sparsity, "action": Action.ROLLBACK.name.lower(),
                "reason": f"end of training: {why}, so the last cut was undone ({restored} weights back)"}  # fmt: skip

    def broken(self, value: float) -> bool:
        """Whether ``value`` is worse than the reference by more than the :attr:`tolerance`."""
        if self.reference is None:
            return False
        drop = self.reference - value if self.mode == "max" else value - self.reference
        return drop > self.tolerance

    def _accept(self) -> None:
        """The latest value is of a model the guard keeps: the base of the next noise move; the reference rises
        with it."""
        value = self.latest
        if value is None or not math.isfinite(value):
            return
        self.accepted = value
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
        self.moves = list(self.moves)
        if state.get("max_drop") != self.max_drop:
            self.refused_in_a_row = 0
