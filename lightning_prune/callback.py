"""RealTimePruningCallback: prunes while the model trains, paced by the logged loss and the gradients.

The callback is thin: it wires Lightning's hooks to the pruning window (schedule.py), the pacing (controller.py) and a
pruner (pruners.py: masks, saliency, channel groups), keeps their state in checkpoints, and logs what it did.
"""

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_prune.controller import (
    Action,
    Decision,
    IntervalRecord,
    RatioController,
    changed_settings,
    unreachable_target,
)
from lightning_prune.guard import Guard
from lightning_prune.importance import IMPORTANCE_METHODS
from lightning_prune.inputs import candidate_inputs
from lightning_prune.logs import decision_metrics, log_decision, log_final
from lightning_prune.pruners import PRUNER_MODES, SHRINK_WHEN, make_pruner
from lightning_prune.schedule import DEFAULT_END_FRACTION, PruningWindow
from lightning_prune.signals import PROBE_SIZE, DamageProbe, PacingSignals, guard_value, reduce_mean
from lightning_prune.validation import check_bool, check_choice, check_int, check_name, check_number, check_patterns

__all__ = ["DEFAULT_END_FRACTION", "RealTimePruningCallback"]

# pace_by="damage": cuts tried per decision, each `shrink` times the last (0.5: down to 1/8 of the proposed ratio)
MAX_TRIAL_CUTS = 4


class RealTimePruningCallback(Callback):
    r"""Prune a network during training, adapting the pace to the monitored loss and the gradient norm.

    Every optimizer step it accumulates the weights' saliency from the gradients (no extra forward pass) and keeps
    cut weights at exactly zero. Every ``interval`` epochs (or steps) it reads ``monitor``, lets the controller choose
    to prune faster, slower, undo the last cut or pause, and cuts the least salient ``ratio`` of the remaining
    prunable weights, globally across layers (``mode="structured"``: whole channels and hidden units).

    Args:
        mode: ``"unstructured"`` (single weights) or ``"structured"`` (conv channels, fc neurons, LSTM hidden units,
            with everything coupled to them).
        importance: ``"taylor"`` (running ``|w*grad|``), ``"gradient"`` (running ``|grad|``) or ``"magnitude"``.
        target_sparsity: Share of the budget (weights, or MACs) to remove by ``end_epoch``, in [0, 1); None: loss only.
        initial_ratio, min_ratio, max_ratio, growth, shrink, loss_tolerance, rollback, rollback_tolerance, cooldown,
            grad_damping: The pacing (:class:`~lightning_prune.controller.RatioController`).
        interval, interval_unit, start_epoch, end_epoch: The window (:class:`~lightning_prune.schedule.PruningWindow`):
            decide every ``interval`` ``"epoch"``\ s or ``"step"``\ s in epochs ``[start_epoch, end_epoch)``;
            ``end_epoch`` defaults to 80% of ``max_epochs``.
        monitor: None paces pruning by the mean over the interval of the loss ``training_step`` returns (any module,
            no logging needed); a name reads that logged metric (averaged over the interval when logged per step).
        pace_by: ``"loss"``: the ratio grows while ``monitor`` holds from one interval to the next; ``"damage"``: while
            the last cut's damage (:class:`~lightning_prune.signals.DamageProbe`: how far it moved the outputs on the
            first training batch's inputs) is at most ``damage_tolerance``. Rollback stays with the loss.
        min_layer_density: No weight tensor (or channel group) keeps less than this share, in [0, 1].
        normalize_per_layer: Rank saliency normalised per layer (every layer loses about the same share) or raw.
        parameters: Glob patterns of parameters to prune instead of the default (Conv/Linear/LSTM/GRU weights but
            the final classifier); ``exclude``: patterns never to prune.
        saliency_beta: Per-step smoothing of the running saliency, in [0, 1).
        saliency_every: Score every this many optimizer steps near a decision (each score stands for the steps since
            the last), >= 1: the per-step cost divided by it, the memory of the past unchanged.
        shrink_when: Structured mode: ``"during"`` removes cut channels at the next interval (training gets cheaper),
            ``"end"`` keeps them masked and leaves the compaction to :meth:`export`.
        budget: What the ratio, the cuts and the target count: ``"weights"``, or in structured mode ``"flops"`` (MACs).
        guard, guard_mode, max_drop: Guard mode (:class:`~lightning_prune.guard.Guard`): a cut after which the logged
            ``guard`` metric (e.g. ``"val_acc"``) ends up more than ``max_drop`` worse than before the first cut
            (``guard_mode`` ``"max"``: higher is better) is undone; with ``target_sparsity=None``, prune that far.
        log_layers: Also log each weight's sparsity as ``pruning/layer/<name>``.
        verbose: Print each interval's decision.

    Raises:
        ValueError: A setting outside its range, named with the range (a wrong type is also a TypeError).

    Example:
        >>> import lightning as L
        >>> pruning = RealTimePruningCallback(target_sparsity=0.9)
        >>> trainer = L.Trainer(callbacks=[pruning], max_epochs=10, logger=False, enable_checkpointing=False)
        >>> pruning.sparsity, pruning.ratio
        (0.0, 0.01)
        >>> RealTimePruningCallback(growth=0.5)
        Traceback (most recent call last):
        ...
        ValueError: `growth` must be a number in [1, inf], got 0.5 (float)
    """

    def __init__(
        self,
        mode: str = "unstructured",
        importance: str = "taylor",
        target_sparsity: float | None = None,
        initial_ratio: float = 0.01,
        min_ratio: float = 0.0,
        max_ratio: float = 0.5,
        growth: float = 1.5,
        shrink: float = 0.5,
        interval: int = 1,
        interval_unit: str = "epoch",
        start_epoch: int = 0,
        end_epoch: int | None = None,
        monitor: str | None = None,
        loss_tolerance: float = 0.02,
        rollback: bool = True,
        rollback_tolerance: float = 0.10,
        cooldown: int = 1,
        min_layer_density: float = 0.02,
        normalize_per_layer: bool = True,
        parameters: list[str] | None = None,
        exclude: list[str] | None = None,
        saliency_beta: float = 0.99,
        saliency_every: int = 16,
        grad_damping: float = 2.0,
        pace_by: str = "loss",
        damage_tolerance: float = 0.01,
        shrink_when: str = "during",
        budget: str = "weights",
        guard: str | None = None,
        guard_mode: str = "max",
        max_drop: float = 0.0,
        log_layers: bool = False,
        verbose: bool = False,
    ) -> None:
        check_choice("mode", mode, PRUNER_MODES)
        check_choice("importance", importance, IMPORTANCE_METHODS)
        check_choice("shrink_when", shrink_when, SHRINK_WHEN)
        self.window = PruningWindow(start_epoch, end_epoch, interval, interval_unit)
        check_number("min_layer_density", min_layer_density, 0, 1)
        check_name("monitor", monitor, "a logged metric")
        check_number("saliency_beta", saliency_beta, 0, 1, high_open=True)
        self.saliency_every = check_int("saliency_every", saliency_every, 1)
        self.guard = Guard(guard, guard_mode, max_drop)
        parameters, exclude = check_patterns("parameters", parameters), check_patterns("exclude", exclude)
        for name, flag in (("normalize_per_layer", normalize_per_layer), ("log_layers", log_layers),
                           ("verbose", verbose)):  # fmt: skip
            check_bool(name, flag)
        self.controller = RatioController(
            initial_ratio=initial_ratio, min_ratio=min_ratio, max_ratio=max_ratio, growth=growth, shrink=shrink,
            loss_tolerance=loss_tolerance, rollback=rollback, rollback_tolerance=rollback_tolerance,
            cooldown=cooldown, target_sparsity=target_sparsity, grad_damping=grad_damping, pace_by=pace_by,
            damage_tolerance=damage_tolerance,
        )  # fmt: skip
        self.pruner = make_pruner(
            mode, shrink_when, budget, importance=importance, saliency_beta=saliency_beta,
            saliency_every=saliency_every, min_layer_density=min_layer_density, normalize_per_layer=normalize_per_layer,
            target_sparsity=target_sparsity, parameters=parameters, exclude=exclude,
        )  # fmt: skip
        self.mode, self.importance, self.shrink_when, self.budget = mode, importance, shrink_when, budget
        self.target_sparsity, self.min_layer_density, self.monitor = target_sparsity, min_layer_density, monitor
        self.saliency_beta, self.normalize_per_layer = saliency_beta, normalize_per_layer
        self.pace_by, self.damage_tolerance = pace_by, damage_tolerance
        self.parameters, self.exclude, self.log_layers, self.verbose = parameters, exclude, log_layers, verbose

        self.history: list[IntervalRecord] = []
        self.final_profile: dict[str, float] | None = None
        self._pending_state: dict[str, Any] | None = None
        self._signals = PacingSignals(monitor, self.window.per_step)
        self._probe = DamageProbe() if pace_by == "damage" else None
        self._done = False
        self._saved_end_epoch: int | None = None  # the window's end in the checkpoint resumed from, until train start
        self._trained: list[torch.nn.Parameter] = []  # whose gradient norm is tracked, listed once per fit
        self._batch_idx = 0

    # -- the window's settings, as given (and end_epoch once the Trainer fixed it) ---------------------------------

    interval = property(lambda self: self.window.interval)
    interval_unit = property(lambda self: self.window.unit)
    start_epoch = property(lambda self: self.window.start_epoch)
    end_epoch = property(lambda self: self.window.end_epoch)

    # -- public read-outs -----------------------------------------------------------------------------------------

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            mode=self.mode, monitor=self.monitor, parameters=self.parameters, exclude=self.exclude
        )

    @property
    def sparsity(self) -> float:
        """Fraction of the prunable weights that are zero now, or removed (structured): counted from the weights
        themselves, against their number before pruning. 0.0 before the fit starts."""
        return self.pruner.sparsity

    @property
    def ratio(self) -> float:
        """The controller's current ratio: the fraction of remaining weights the next cut starts from."""
        return self.controller.ratio

    masks = property(lambda self: self.pruner.masks, doc="The pruner's masks (None before setup).")
    saliency = property(lambda self: self.pruner.saliency, doc="The pruner's running saliency (None before setup).")
    example_input = property(lambda self: self.pruner.example_input, doc="A few inputs of the first training batch.")

    def export(self, module: torch.nn.Module) -> torch.nn.Module:
        """A compact dense copy of ``module`` (the original is untouched) without the channels whose outputs are
        exactly zero: in structured mode every cut channel, so the copy computes what the pruned model computes."""
        return self.pruner.export(module)

    # -- setup ---------------------------------------------------------------------------------------------------

    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        if stage != "fit" or self.pruner.masks is not None:
            return
        self.pruner.setup(trainer, pl_module)
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None

    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        # setup() ran before the strategy moved the model to its device: bring the per-weight buffers along
        self.pruner.follow_device()
        self._trained = [p for p in pl_module.parameters() if p.requires_grad]

    def _resolve_window(self, max_epochs: int | None) -> None:
        """Fix ``end_epoch`` for this fit. A resumed fit follows its own ``max_epochs`` (or the ``end_epoch`` given),
        not the one of the run it resumes, and says so when that moves the window's end; without ``max_epochs`` it
        keeps the saved end."""
        saved, self._saved_end_epoch = self._saved_end_epoch, None
        if self.window.end_epoch is None and saved is not None and (max_epochs is None or max_epochs < 0):
            self.window.end_epoch = saved
        self.window.resolve(max_epochs)
        if saved is not None and self.window.end_epoch != saved:
            self._done = False  # "pruning window over" may no longer hold: decide again
            rank_zero_warn(f"RealTimePruningCallback: resuming with the pruning window ending at "
                           f"end_epoch={self.window.end_epoch} (was {saved}; max_epochs={max_epochs}): the pace "
                           "follows it.")  # fmt: skip

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        # after any checkpoint was restored, whichever the strategy's order of restoring and on_fit_start
        self._resolve_window(trainer.max_epochs)
        if self.verbose:
            weights = f"{len(self.pruner.prunable)} tensors ({self.pruner.initial_weights:,} weights)"
            rank_zero_info(f"RealTimePruningCallback ({self.mode}): pruning {weights}, epochs [{self.start_epoch}, "
                           f"{self.end_epoch})")  # fmt: skip
        # the data is known now: say at once when the window can never open or the target cannot be reached
        steps_per_epoch = trainer.num_training_batches / max(1, trainer.accumulate_grad_batches)
        problems = self.window.problems(trainer.max_epochs, steps_per_epoch) if not self.history else []
        problems = problems or unreachable_target(self.controller, self.min_layer_density, self.window)
        for problem in problems + self.guard.problems(trainer.enable_validation):
            rank_zero_warn(f"RealTimePruningCallback: {problem}")

    # -- per step: cheap, in place --------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule", batch: Any, batch_idx: int):
        self._batch_idx = batch_idx
        if not self.pruner.candidates:
            self.pruner.prepare(candidate_inputs(batch, pl_module))
        if self._probe is not None and not self._probe.inputs:
            # the batch's own samples, not `example_input_array`: a declared example may be a single sample
            self._probe.capture(candidate_inputs(batch, size=PROBE_SIZE), self.pruner.forward_targets())

    def on_train_epoch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._signals.on_epoch_start(trainer.callback_metrics)

    def on_before_optimizer_step(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", optimizer: torch.optim.Optimizer
    ) -> None:
        # gradients here are final: unscaled under AMP, all-reduced under DDP. Only every few steps near a decision
        # are scored: the running saliency forgets at rate beta, so steps further away than its horizon barely count
        if self._done:
            return
        horizon = self.pruner.saliency.horizon * max(1, trainer.accumulate_grad_batches)
        near = self.window.near_decision(
            trainer.current_epoch, trainer.global_step, self._batch_idx, trainer.num_training_batches, horizon
        )
        if not near or trainer.global_step % self.saliency_every:
            self.pruner.score(fold_in=False)
            return
        # a step with non-finite gradients (what GradScaler skips) is, for the statistics, a step that did not happen
        if self._signals.after_gradients(self._trained):
            self.pruner.score(fold_in=self.window.contains(trainer.current_epoch))

    def on_train_batch_end(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.pruner.after_step()
        self._signals.after_batch(outputs, trainer.callback_metrics)
        step = trainer.global_step
        last = self.history[-1]["step"] if self.history else -1
        if self.window.decides_after_step(step) and step != last:
            self._run_interval(trainer, pl_module)

    # -- per interval ---------------------------------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self.window.decides_after_epoch(trainer.current_epoch):
            self._run_interval(trainer, pl_module)

    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self.guard.metric is not None and not trainer.sanity_checking:
            self.guard.observe(reduce_mean(trainer.strategy, guard_value(self.guard.metric, trainer.callback_metrics)))

    def _run_interval(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        epoch = trainer.current_epoch
        loss = reduce_mean(trainer.strategy, self._signals.take_loss(trainer.callback_metrics))
        grad_norm = self._signals.take_grad_norm()
        # identical on every rank after the gradient all-reduce, up to float noise: reduce to be exact
        grad_norm = None if grad_norm is None else reduce_mean(trainer.strategy, grad_norm)
        remaining = self.pruner.remaining()  # the budget's units (weights, or MACs), counted once
        decision = self._decide(trainer, epoch, loss, grad_norm, self.pruner.sparsity_at(remaining))
        decision, changed = self._act(trainer, pl_module, decision, remaining)
        sparsity = self.sparsity if changed < 0 else self.pruner.sparsity_after(remaining, changed)
        if decision.action == Action.DONE or self.guard.exhausted:
            self._done = True
            self.pruner.saliency.release()  # no decision will read it again
        entry: IntervalRecord = {"epoch": epoch, "step": trainer.global_step, "loss": loss, "grad_norm": grad_norm,
                                 "ratio": decision.ratio, "pruned": changed, "sparsity": sparsity,
                                 "action": decision.action.name.lower(), "reason": decision.reason}  # fmt: skip
        self.history.append(entry)
        metrics = decision_metrics(entry, self._signals.skipped_steps, self.pruner.readouts(self.log_layers, sparsity))
        log_decision(trainer, pl_module, metrics, self.window.per_step)
        if self.verbose:
            rank_zero_info(f"pruning @ epoch {epoch} step {entry['step']}: {entry['action']} ({decision.reason}), "
                           f"ratio {decision.ratio:.4f}, sparsity {entry['sparsity']:.4f}")  # fmt: skip

    def _decide(self, trainer: "L.Trainer", epoch: int, loss: float, grad_norm: float | None, sparsity: float):
        if (guarded := self.guard.decision(self.controller)) is not None:
            return guarded
        if self._done:
            return Decision(Action.DONE, 0.0, "done")
        if epoch < self.start_epoch:
            return Decision(Action.PAUSE, 0.0, f"waiting for start_epoch={self.start_epoch}")
        steps_per_epoch = max(1, trainer.estimated_stepping_batches // max(1, trainer.max_epochs or 1))
        intervals_left = self.window.intervals_left(epoch, trainer.global_step, steps_per_epoch)
        damage = self._probe.take() if self._probe is not None else None
        decision = self.controller.step(loss, grad_norm, sparsity, intervals_left, self.pruner.resolution(), damage)
        if not math.isfinite(loss):
            rank_zero_warn(f"RealTimePruningCallback: the monitored `{self.monitor}` is non-finite ({loss}): NaN "
                           "or infinite losses are never pruned on; pausing this interval.")  # fmt: skip
        return decision

    def _act(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", decision: Decision, remaining: float
    ) -> tuple[Decision, int]:
        """Carry out the decision; returns it (with the ratio actually cut) and the weights cut (negative: restored)."""
        if decision.action == Action.ROLLBACK:
            return decision, -self.pruner.undo()
        if not self.guard.pending:  # a cut on probation is not made final
            self.pruner.before_decision(trainer)
        if not decision.prunes:
            return decision, 0
        if self._probe is None:
            cut = self.pruner.prune(trainer, decision.ratio, remaining)
        else:
            decision, cut = self._cut_within_damage(trainer, pl_module, decision, remaining)
        if cut:
            self.guard.after_cut()
        return decision, cut

    def _cut_within_damage(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", decision: Decision, remaining: float
    ) -> tuple[Decision, int]:
        """Cut, measure the damage on the probe, and while it exceeds the tolerance, undo and cut less (down to the
        target's floor): each cut as large as is harmless now. An undone trial leaves the weights and their optimizer
        state exactly as they were."""
        ratio, trials, first_damage = decision.ratio, 1, None
        self._probe.before_cut(pl_module)  # an undone trial leaves the outputs as they were: measured once
        restore_optimizer_state = self.pruner.optimizer_state_restorer(trainer)
        while True:
            cut = self.pruner.prune(trainer, ratio, remaining)
            if not cut:
                return decision, 0
            # each rank probed its own first batch: decide on the mean, the same everywhere
            damage = reduce_mean(trainer.strategy, torch.tensor(self._probe.after_cut(pl_module)))
            self._probe.last = damage
            first_damage = damage if first_damage is None else first_damage
            smaller = self.controller.smaller_cut(ratio, damage) if trials < MAX_TRIAL_CUTS else None
            if smaller is None:
                break
            self.pruner.undo()
            restore_optimizer_state()
            ratio, trials = smaller, trials + 1
        if trials > 1:
            tried = f"{decision.ratio:.4f} did damage {first_damage:.3g} > {self.controller.damage_tolerance}"
            reason = f"{decision.reason}; {tried}: cut {ratio:.4f}"
            decision = Decision(decision.action, ratio, reason)
        return decision, cut

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not self.guard.keeps_last_cut():
            restored = self.pruner.undo()
            entry = self.guard.undone_at_end(trainer.current_epoch, trainer.global_step, restored, self.sparsity)
            self.history.append(entry)
            rank_zero_warn(f"RealTimePruningCallback: {entry['reason']}.")
        self.pruner.finish(trainer)

    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        """Profile the final model (structured: its compact export) and hand the figures to every logger."""
        if not trainer.is_global_zero:
            return
        self.final_profile = self.pruner.final_profile(pl_module)
        log_final(trainer, self.final_profile)

    def teardown(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        self.pruner.teardown(pl_module)

    # -- persistence ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        own = {"controller": self.controller.state_dict(), "history": list(self.history), "done": self._done,
               "end_epoch": self.end_epoch, "signals": self._signals.state_dict(),
               "guard": self.guard.state_dict()}  # fmt: skip
        if self._probe is not None:
            own["probe"] = self._probe.state_dict()
        return {**own, **self.pruner.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.pruner.masks is None:
            # Lightning restores callbacks after setup(); if called earlier, apply the state once the model is known
            self._pending_state = state_dict
            return
        self._restore(state_dict)

    def _restore(self, state: dict[str, Any]) -> None:
        changed = {**changed_settings(self.controller, state["controller"]),
                   **changed_settings(self.guard, state.get("guard", {}))}  # fmt: skip
        self.controller.load_state_dict(state["controller"])
        self.history = list(state["history"])
        # "done" was decided under the saved settings: under new ones (a higher target, a looser guard) decide again
        self._done = state["done"] and not changed
        if changed:
            said = ", ".join(f"{name}={now!r} (was {saved!r})" for name, (saved, now) in changed.items())
            rank_zero_warn(f"RealTimePruningCallback: resuming with changed settings, which apply from now on: {said}.")
        self._saved_end_epoch = state["end_epoch"]
        if "signals" in state:
            self._signals.load_state_dict(state["signals"])
        if "guard" in state:
            self.guard.load_state_dict(state["guard"])
        if self._probe is not None and "probe" in state:
            self._probe.load_state_dict(state["probe"])
        self.pruner.load_state_dict(state)
