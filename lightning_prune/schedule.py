"""The pruning window: when decisions happen, how many are left, and which steps still weigh in the next one.

Pure arithmetic over epochs and steps (no torch, no Lightning): the callback asks it with the Trainer's counters, and
``compare`` asks it which epochs its baselines prune at, so every arm prunes on the same calendar.
"""

import math
from dataclasses import dataclass, field

from lightning_prune.validation import check_choice, check_int

INTERVAL_UNITS = ("epoch", "step")
# the default end of the pruning window, as a fraction of max_epochs: the rest of the run recovers accuracy
DEFAULT_END_FRACTION = 0.8


def steps_per_epoch(batches_per_epoch: float, accumulate_grad_batches: int = 1) -> float:
    """Optimizer steps in an epoch of ``batches_per_epoch`` batches (inf when the data has no length).

    Example:
        >>> steps_per_epoch(10, accumulate_grad_batches=4)
        3
    """
    if not math.isfinite(batches_per_epoch):
        return math.inf
    return max(1, math.ceil(batches_per_epoch / max(1, accumulate_grad_batches)))


@dataclass(frozen=True)
class Clock:
    """Where a fit stands, in the Trainer's counters: what the window's questions are asked with.

    Args:
        epoch, global_step: The Trainer's ``current_epoch`` and ``global_step``.
        batches_done: Training batches of this epoch done (the one just finished included).
        batches_per_epoch: ``num_training_batches`` (inf for data without a length).
        accumulate: ``accumulate_grad_batches``.
        val_every: Batches between validation runs (``val_check_batch``); inf without validation.
        val_epochs: ``check_val_every_n_epoch`` (None: validation goes by batches alone).
        max_epochs, max_steps: The Trainer's budget (-1 or None: not set).
    """

    epoch: int = 0
    global_step: int = 0
    batches_done: int = 0
    batches_per_epoch: float = math.inf
    accumulate: int = 1
    val_every: float = math.inf
    val_epochs: int | None = 1
    max_epochs: int | None = None
    max_steps: int = -1

    @property
    def steps_per_epoch(self) -> float:
        return steps_per_epoch(self.batches_per_epoch, self.accumulate)


@dataclass
class PruningWindow:
    """Decisions every ``interval`` epochs (at an epoch's end) or optimizer steps, in epochs ``[start, end)``.

    Args:
        start_epoch: First epoch (0-based) at whose intervals pruning may happen.
        end_epoch: Pruning happens before this epoch; None: 80% of ``max_epochs``, set by :meth:`resolve`.
        interval: Decide every this many epochs or steps.
        unit: ``"epoch"`` or ``"step"``.

    Example:
        >>> window = PruningWindow(start_epoch=2, interval=2)
        >>> window.resolve(max_epochs=10).end_epoch
        8
        >>> window.decision_epochs(max_epochs=10), window.intervals_left(epoch=5)
        ([3, 5, 7], 2)
    """

    start_epoch: int = 0
    end_epoch: int | None = None
    interval: int = 1
    unit: str = "epoch"
    last_step: int | None = field(default=None, init=False)  # the Trainer's max_steps, when it ends the run

    def __post_init__(self) -> None:
        check_choice("interval_unit", self.unit, INTERVAL_UNITS)
        check_int("interval", self.interval, 1)
        check_int("start_epoch", self.start_epoch, 0)
        if self.end_epoch is not None:
            check_int("end_epoch", self.end_epoch, self.start_epoch + 1)

    @property
    def per_step(self) -> bool:
        return self.unit == "step"

    def default_end(self, max_epochs: int) -> int:
        return max(self.start_epoch + 1, int(DEFAULT_END_FRACTION * max_epochs))

    def resolve(
        self, max_epochs: int | None, max_steps: int | None = None, epoch_steps: float = math.inf
    ) -> "PruningWindow":
        """Fix ``end_epoch`` from the Trainer's budget when it was not given: ``max_epochs``, or the epochs that
        ``max_steps`` optimizer steps take at ``epoch_steps`` steps an epoch. A ``max_steps`` that ends the run
        first also ends the window (the intervals left count to it, so a target is reached on time).

        Example:
            >>> window = PruningWindow(interval=2, unit="step").resolve(max_epochs=-1, max_steps=12, epoch_steps=4)
            >>> window.end_epoch, window.intervals_left(epoch=0, global_step=1, steps_per_epoch=4)
            (2, 4)
        """
        stops = max_steps is not None and max_steps > 0
        self.last_step = max_steps if stops else None
        if self.end_epoch is None:
            if max_epochs is None or max_epochs < 0:
                if not (stops and math.isfinite(epoch_steps)):
                    raise ValueError(
                        "RealTimePruningCallback needs `end_epoch` when the Trainer has no `max_epochs` "
                        f"(got max_epochs={max_epochs}) and no `max_steps` over data of a known length"
                    )
                max_epochs = math.ceil(max_steps / epoch_steps)
            self.end_epoch = self.default_end(max_epochs)
        return self

    def problems(self, max_epochs: int | None, steps_per_epoch: float) -> list[str]:
        """Why this window would never see a decision in a fit of ``max_epochs`` epochs of ``steps_per_epoch``
        optimizer steps (empty when it will), and what to change."""
        if max_epochs is not None and max_epochs >= 0 and self.start_epoch >= max_epochs:
            return [f"start_epoch={self.start_epoch} is at or past the Trainer's max_epochs={max_epochs}: nothing will "
                    "be pruned. Lower `start_epoch` or raise `max_epochs`."]  # fmt: skip
        if not self.per_step and self.intervals_in_window() == 0:
            return [f"no epoch in [{self.start_epoch}, {self.end_epoch}) ends an interval of {self.interval} epochs: "
                    "nothing will be pruned. Lower `interval` or raise `end_epoch`."]  # fmt: skip
        if self.per_step and math.isfinite(steps_per_epoch):
            last_step = min(self.end_epoch, max_epochs if max_epochs and max_epochs > 0 else self.end_epoch)
            if int(last_step * steps_per_epoch) < self.interval:
                return [f"the first decision would come after {self.interval} steps, but the window ends after "
                        f"{int(last_step * steps_per_epoch)}: nothing will be pruned. Lower `interval`."]  # fmt: skip
        return []

    def contains(self, epoch: int) -> bool:
        return self.start_epoch <= epoch < (self.end_epoch if self.end_epoch is not None else math.inf)

    # -- when decisions happen --------------------------------------------------------------------------------------

    def decides_after_epoch(self, epoch: int) -> bool:
        return not self.per_step and (epoch + 1) % self.interval == 0

    def decides_after_step(self, global_step: int) -> bool:
        return self.per_step and global_step > 0 and global_step % self.interval == 0

    def decision_epochs(self, max_epochs: int) -> list[int]:
        """The epochs at whose end pruning may happen (step intervals fall in every epoch of the window).

        Example:
            >>> PruningWindow().decision_epochs(10)
            [0, 1, 2, 3, 4, 5, 6, 7]
        """
        end = self.end_epoch if self.end_epoch is not None else self.default_end(max_epochs)
        window = range(self.start_epoch, min(end, max_epochs))
        return list(window) if self.per_step else [e for e in window if (e + 1) % self.interval == 0]

    def intervals_in_window(self) -> int | None:
        """Decisions from start to end (epoch intervals only; None for step intervals, which depend on the data)."""
        if self.per_step:
            return None
        return sum(1 for e in range(self.start_epoch, self.end_epoch) if (e + 1) % self.interval == 0)

    def intervals_left(self, epoch: int, global_step: int = 0, steps_per_epoch: float = 1) -> int:
        """Decisions from now to the end of the window (or of the run, when ``max_steps`` ends it first), this one
        included."""
        end = self._last_epoch(steps_per_epoch)
        if not self.per_step:
            return sum(1 for e in range(epoch, end) if (e + 1) % self.interval == 0)
        if epoch >= end:
            return 0
        last_step = self.end_epoch * steps_per_epoch if math.isfinite(steps_per_epoch) else math.inf
        last_step = int(min(last_step, self.last_step or math.inf))
        return max(0, last_step // self.interval - (global_step - 1) // self.interval)

    def validations_left(
        self, epoch: int, batches_done: int, batches_per_epoch: float, val_every: float, val_epochs: int | None
    ) -> int:
        """About how many validation runs are left in the window, the one just finished included: what a guard that
        decides after each validation run has left. ``val_every``: batches between runs (the Trainer's
        ``val_check_batch``); ``val_epochs``: its ``check_val_every_n_epoch`` (None: runs go by batches alone).

        Example:
            >>> window = PruningWindow(end_epoch=3)
            >>> window.validations_left(epoch=1, batches_done=50, batches_per_epoch=100, val_every=25, val_epochs=1)
            7
        """
        end = self._last_epoch(math.inf)
        if epoch >= end or not math.isfinite(batches_per_epoch) or not math.isfinite(val_every) or val_every <= 0:
            return max(0, end - epoch)
        per_epoch = max(1, int(batches_per_epoch // val_every))
        # runs at every val_every-th batch: those at or after the batches done (the one just finished among them)
        this_epoch = max(1, per_epoch - max(0, math.ceil(batches_done / val_every) - 1))
        later = sum(1 for e in range(epoch + 1, end) if not val_epochs or (e + 1) % val_epochs == 0)
        return this_epoch + later * per_epoch

    def _last_epoch(self, steps_per_epoch: float) -> int:
        """The window's end, or the epoch in which ``max_steps`` ends the run, whichever comes first."""
        if self.last_step is None or not math.isfinite(steps_per_epoch):
            return self.end_epoch
        return min(self.end_epoch, math.ceil(self.last_step / max(steps_per_epoch, 1)))

    def decisions_left(self, clock: Clock, per_validation: bool) -> int:
        """Decisions left (this one included): the window's intervals, or with ``per_validation`` its validation
        runs."""
        if per_validation:
            return self.validations_left(clock.epoch, clock.batches_done, clock.batches_per_epoch, clock.val_every,
                                         clock.val_epochs)  # fmt: skip
        return self.intervals_left(clock.epoch, clock.global_step, clock.steps_per_epoch)

    def near_next(self, clock: Clock, horizon: float, per_validation: bool) -> bool:
        """Whether fewer than ``horizon`` optimizer steps follow this one before the next decision: the window's
        next interval, or with ``per_validation`` the next validation run."""
        if per_validation:
            to_go = clock.val_every - clock.batches_done % clock.val_every
            return not math.isfinite(to_go) or to_go < horizon
        return self.near_decision(clock.epoch, clock.global_step, clock.batches_done - 1, clock.batches_per_epoch,
                                  horizon)  # fmt: skip

    def near_decision(
        self, epoch: int, global_step: int, batch_idx: int, batches_per_epoch: float, horizon: float
    ) -> bool:
        """Whether fewer than ``horizon`` optimizer steps (epoch unit: batches) follow this one before the next
        decision; True when the epoch length is unknown."""
        if self.per_step:
            after_this = self.interval - global_step % self.interval - 1
        elif math.isfinite(batches_per_epoch):
            epochs_after_this = self.interval - 1 - epoch % self.interval
            after_this = (batches_per_epoch - batch_idx - 1) + epochs_after_this * batches_per_epoch
        else:
            return True
        return after_this < horizon
