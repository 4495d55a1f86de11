"""The pruning window: when decisions happen, how many are left, and which steps still weigh in the next one.

Pure arithmetic over epochs and steps (no torch, no Lightning): the callback asks it with the Trainer's counters, and
``compare`` asks it which epochs its baselines prune at, so every arm prunes on the same calendar.
"""

import math
from dataclasses import dataclass

from lightning_prune.validation import check_choice, check_int

INTERVAL_UNITS = ("epoch", "step")
# the default end of the pruning window, as a fraction of max_epochs: the rest of the run recovers accuracy
DEFAULT_END_FRACTION = 0.8


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

    def resolve(self, max_epochs: int | None) -> "PruningWindow":
        """Fix ``end_epoch`` from the Trainer's ``max_epochs`` when it was not given."""
        if self.end_epoch is None:
            if max_epochs is None or max_epochs < 0:
                raise ValueError(
                    "RealTimePruningCallback needs `end_epoch` when the Trainer has no `max_epochs` "
                    f"(got max_epochs={max_epochs})"
                )
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

    def intervals_left(self, epoch: int, global_step: int = 0, steps_per_epoch: int = 1) -> int:
        """Decisions from now to the end of the window, this one included."""
        if not self.per_step:
            return sum(1 for e in range(epoch, self.end_epoch) if (e + 1) % self.interval == 0)
        if epoch >= self.end_epoch:
            return 0
        last_step = self.end_epoch * max(1, steps_per_epoch)
        return max(0, last_step // self.interval - (global_step - 1) // self.interval)

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
