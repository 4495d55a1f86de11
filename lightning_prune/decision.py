"""One pruning decision, from its signals to the cut: the guard's verdict, the controller's ratio, the pruner's cut.

The callback gathers the signals (the pacing loss, the gradient norm) and hands them here once per interval;
:class:`Decisions` asks the guard whether the last cut stays, the controller how much to cut (its pacing strategy:
``pacing.py``), and the pruner to cut it; with ``pace_by="damage"`` each cut is measured on the probe and, while it
does more damage than ``damage_tolerance``, undone and made smaller. It keeps what was decided (``history``) and
whether pruning is over, and saves them with the controller, guard and probe as one state.
"""

import math
from typing import TYPE_CHECKING, Any

import torch

from lightning_prune.controller import (
    Action,
    Decision,
    IntervalRecord,
    RatioController,
    changed_settings,
    unreachable_target,
)
from lightning_prune.guard import Guard
from lightning_prune.inputs import candidate_inputs
from lightning_prune.probe import PROBE_SIZE, DamageProbe
from lightning_prune.schedule import Clock, PruningWindow
from lightning_prune.signals import reduce_mean

if TYPE_CHECKING:
    import lightning as L

    from lightning_prune.pruners import Pruner

# pace_by="damage": cuts tried per decision, each `shrink` times the last (0.5: down to 1/8 of the proposed ratio)
MAX_TRIAL_CUTS = 4


class Decisions:
    """The per-decision sequence and what it remembers.

    Args:
        controller: How much to cut (its ``pace_by`` strategy paces the ratio).
        guard: Whether the last cut stays (a guard without a metric keeps every cut).
        window: When pruning may happen (``start_epoch``, the intervals left).
    """

    def __init__(self, controller: RatioController, guard: Guard, window: PruningWindow) -> None:
        self.controller, self.guard, self.window = controller, guard, window
        self.probe = DamageProbe() if controller.pace_by == "damage" else None
        self.history: list[IntervalRecord] = []
        self.done = False
        self.warnings: list[str] = []  # what the last decision found worth a warning (the callback says it)
        self.saved_end_epoch: int | None = None  # the window's end in the checkpoint resumed from, until train start
        self.validated = False  # a validation run ended since the last decision (guard pacing decides then)
        self.snapshot: dict[str, Any] | None = None  # the model the guard kept last, while a cut is on probation
        self._noise_said = False

    @property
    def paced_by_guard(self) -> bool:
        """Decisions follow the validation runs (one per run) rather than the window's interval."""
        return self.controller.pace_by == "guard"

    def start(self, trainer: "L.Trainer", clock: Clock, min_layer_density: float) -> list[str]:
        """At train start (after any restore): fix the window's end for this fit's budget, and say what keeps it from
        pruning or from reaching its target. A resumed fit follows its own budget (or the ``end_epoch`` given), not
        the one of the run it resumes, and says so when that moves the window's end; without one it keeps the saved
        end. A StochasticWeightAveraging callback averaging inside the window is said too."""
        window, saved, self.saved_end_epoch = self.window, self.saved_end_epoch, None
        averaging_from = averaging_start(trainer)
        problems = []
        unbounded = (clock.max_epochs is None or clock.max_epochs < 0) and not clock.max_steps > 0
        if window.end_epoch is None and saved is not None and unbounded:
            window.end_epoch = saved
        window.resolve(clock.max_epochs, clock.max_steps, clock.steps_per_epoch)
        if saved is not None and window.end_epoch != saved:
            self.done = False  # "pruning window over" may no longer hold: decide again
            problems.append(f"resuming with the pruning window ending at end_epoch={window.end_epoch} (was {saved}; "
                            f"max_epochs={clock.max_epochs}): the pace follows it.")  # fmt: skip
        if averaging_from is not None and window.end_epoch > averaging_from:
            problems.append(f"StochasticWeightAveraging averages from epoch {averaging_from}, inside the pruning "
                            f"window (end_epoch={window.end_epoch}): at the end of training it copies its average "
                            "back, which holds the values of weights cut after that epoch. Set end_epoch <= "
                            f"{averaging_from}, or start the averaging later.")  # fmt: skip
        if self.history:  # a resumed run said the rest when it started
            return problems
        opening = window.problems(clock.max_epochs, clock.steps_per_epoch)
        problems += opening or unreachable_target(self.controller, min_layer_density, window)
        runs = window.decisions_left(clock, per_validation=True) if self.paced_by_guard else None
        return problems + self.guard.problems(trainer.enable_validation, runs, self.controller.max_ratio)

    def capture_probe(self, batch: Any, pruner: "Pruner") -> None:
        """``pace_by="damage"``: keep the samples of the first training batch as the probe (the batch's own, not
        ``example_input_array``: a declared example may be a single sample)."""
        if self.probe is not None and not self.probe.inputs:
            self.probe.capture(candidate_inputs(batch, size=PROBE_SIZE), pruner.forward_targets())

    def near_next(self, clock: Clock, horizon: float) -> bool:
        return self.window.near_next(clock, horizon, per_validation=self.paced_by_guard)

    def run(
        self,
        trainer: "L.Trainer",
        pl_module: "L.LightningModule",
        pruner: "Pruner",
        signals: dict[str, float | None],
        clock: Clock,
    ) -> IntervalRecord:
        """Decide and act on one interval's ``signals`` (``loss``, ``grad_norm``, ``grad_norm_max``); return the
        history entry it appended."""
        epoch, loss = trainer.current_epoch, signals["loss"]
        self.validated = False
        intervals_left = self.window.decisions_left(clock, per_validation=self.paced_by_guard)
        self.warnings = []
        remaining = pruner.remaining()  # the budget's units (weights, or MACs), counted once
        decision = self._decide(epoch, loss, signals["grad_norm"], pruner, remaining, intervals_left)
        decision, changed = self._act(trainer, pl_module, pruner, decision, remaining)
        sparsity = pruner.sparsity if changed < 0 else pruner.sparsity_after(remaining, changed)
        if decision.action == Action.DONE or self.guard.exhausted:
            self.done = True
            pruner.saliency.release()  # no decision will read it again
        entry: IntervalRecord = {"epoch": epoch, "step": trainer.global_step, "loss": loss,
                                 "grad_norm": signals["grad_norm"], "grad_norm_max": signals["grad_norm_max"],
                                 "ratio": decision.ratio, "pruned": changed, "sparsity": sparsity,
                                 "action": decision.action.name.lower(), "reason": decision.reason}  # fmt: skip
        self.history.append(entry)
        return entry

    def _decide(
        self, epoch: int, loss: float, grad_norm: float | None, pruner: "Pruner", remaining: float, intervals_left: int
    ) -> Decision:
        if not self._noise_said and (problem := self.guard.noise_problem()) is not None:
            self.warnings.append(f"RealTimePruningCallback: {problem}")
            self._noise_said = True
        verdict_before = self.guard.pending
        if (guarded := self.guard.decision(self.controller)) is not None:
            return guarded
        if verdict_before:  # the guard kept the cut: the model before it is not needed any more
            self.snapshot = None
        if self.done:
            return Decision(Action.DONE, 0.0, "done")
        if epoch < self.window.start_epoch:
            return Decision(Action.PAUSE, 0.0, f"waiting for start_epoch={self.window.start_epoch}")
        damage = self.probe.take() if self.probe is not None else None
        kept = True if verdict_before else None  # the guard judged the last cut and did not refuse it
        if not math.isfinite(loss):
            self.warnings.append(non_finite_loss_warning(loss))
        return self.controller.step(loss, grad_norm, pruner.sparsity_at(remaining), intervals_left,
                                    pruner.resolution(), damage, kept)  # fmt: skip

    def _act(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", pruner: "Pruner", decision: Decision,
        remaining: float,
    ) -> tuple[Decision, int]:  # fmt: skip
        """Carry out the decision; returns it (with the ratio actually cut) and the weights cut (negative: restored)."""
        if decision.action == Action.ROLLBACK:
            return decision, -self._undo(trainer, pruner)
        if not self.guard.pending:  # a cut on probation is not made final
            pruner.before_decision(trainer)
        if not decision.prunes:
            return decision, 0
        target = self.controller.target_sparsity
        if self.guard.metric is not None:  # a cut the guard may refuse: keep the model it would go back to
            self.snapshot = pruner.snapshot(trainer)
        if self.probe is None:
            cut = pruner.prune(trainer, decision.ratio, remaining, target)
        else:
            decision, cut = self._cut_within_damage(trainer, pl_module, pruner, decision, remaining)
        if cut:
            self.guard.after_cut()
        else:
            self.snapshot = None
        return decision, cut

    def _undo(self, trainer: "L.Trainer", pruner: "Pruner") -> int:
        """Undo the last cut: a cut the guard refused (or never judged) goes back to the model the guard kept last,
        exactly (weights, optimizer state, the training since); a loss rollback restores the cut weights alone."""
        if self.snapshot is None:
            return pruner.undo()
        restored, self.snapshot = pruner.rewind(trainer, self.snapshot), None
        return restored

    def _cut_within_damage(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", pruner: "Pruner", decision: Decision,
        remaining: float,
    ) -> tuple[Decision, int]:  # fmt: skip
        """Cut, measure the damage on the probe, and while it exceeds the tolerance, undo and cut less (down to the
        target's floor): each cut as large as is harmless now. An undone trial leaves the weights and their optimizer
        state exactly as they were."""
        ratio, trials, first_damage = decision.ratio, 1, None
        target = self.controller.target_sparsity
        self.probe.before_cut(pl_module)  # an undone trial leaves the outputs as they were: measured once
        restore_optimizer_state = pruner.optimizer_state_restorer(trainer)
        while True:
            cut = pruner.prune(trainer, ratio, remaining, target)
            if not cut:
                return decision, 0
            # each rank probed its own first batch: decide on the mean, the same everywhere
            damage = reduce_mean(trainer.strategy, torch.tensor(self.probe.after_cut(pl_module)))
            self.probe.last = damage
            first_damage = damage if first_damage is None else first_damage
            smaller = self.controller.smaller_cut(ratio, damage) if trials < MAX_TRIAL_CUTS else None
            if smaller is None:
                break
            pruner.undo()
            restore_optimizer_state()
            ratio, trials = smaller, trials + 1
        if trials > 1:
            tried = f"{decision.ratio:.4f} did damage {first_damage:.3g} > {self.controller.damage_tolerance}"
            decision = Decision(decision.action, ratio, f"{decision.reason}; {tried}: cut {ratio:.4f}")
        return decision, cut

    def finish(self, trainer: "L.Trainer", pruner: "Pruner") -> str | None:
        """At the end of training: undo a last cut the guard did not keep (no validation run judged it, or the last
        one refused it), so the final model is the sparsest one that kept the guard; the reason, when one was."""
        if self.guard.keeps_last_cut():
            return None
        restored = self._undo(trainer, pruner)
        entry = self.guard.undone_at_end(trainer.current_epoch, trainer.global_step, restored, pruner.sparsity)
        self.history.append(entry)
        return entry["reason"]

    # -- persistence ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = {"controller": self.controller.state_dict(), "guard": self.guard.state_dict(),
                 "history": list(self.history), "done": self.done, "end_epoch": self.window.end_epoch,
                 "validated": self.validated, "snapshot": self.snapshot}  # fmt: skip
        if self.probe is not None:
            state["probe"] = self.probe.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> str:
        """Restore what was decided; the settings stay the ones this object was built with. Returns the settings
        that differ from the saved ones, said (``target_sparsity=0.8 (was 0.5)``; empty when none): "done" was decided
        under the saved ones, so under new ones (a higher target, a looser guard) it is decided again."""
        changed = {**changed_settings(self.controller, state["controller"]),
                   **changed_settings(self.guard, state.get("guard", {}))}  # fmt: skip
        self.controller.load_state_dict(state["controller"])
        if "guard" in state:
            self.guard.load_state_dict(state["guard"])
        if self.probe is not None and "probe" in state:
            self.probe.load_state_dict(state["probe"])
        self.history = list(state["history"])
        self.done = state["done"] and not changed
        self.saved_end_epoch = state["end_epoch"]
        # a checkpoint written after a validation run, before the decision it calls for
        self.validated = state.get("validated", False)
        self.snapshot = state.get("snapshot")
        return ", ".join(f"{name}={now!r} (was {saved!r})" for name, (saved, now) in changed.items())


def non_finite_loss_warning(loss: float) -> str:
    return (f"RealTimePruningCallback: the pacing loss is non-finite ({loss}): NaN or infinite losses are never "
            "pruned on; pausing this interval.")  # fmt: skip


def checkpoint_state(state: dict[str, Any]) -> dict[str, Any]:
    """The callback's saved state as ``{"decision": ..., "pruner": ...}``, also from a checkpoint of the flat layout
    written before the two were nested (every key of both side by side)."""
    if "decision" in state:
        return state
    decision_keys = ("controller", "history", "done", "end_epoch", "signals", "guard", "probe", "validated", "snapshot")
    return {"decision": {k: v for k, v in state.items() if k in decision_keys},
            "pruner": {k: v for k, v in state.items() if k not in decision_keys}}  # fmt: skip


def averaging_start(trainer: "L.Trainer") -> int | None:
    """The first epoch a StochasticWeightAveraging callback of ``trainer`` averages (resolved by it at fit start),
    None without one."""
    for callback in trainer.callbacks:
        if any(k.__name__ == "StochasticWeightAveraging" for k in type(callback).__mro__):
            try:
                return int(callback.swa_start)  # 0-based, once the callback resolved it at fit start
            except (AssertionError, AttributeError, TypeError, ValueError):
                return None
    return None
