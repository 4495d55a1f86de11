"""RealTimePruningCallback: prunes while the model trains, paced by the logged loss and the gradients.

The callback is thin: it wires Lightning's hooks to the pruning window (schedule.py), the signals (signals.py), one
decision per interval (decision.py: guard, controller, trial cuts) and a pruner (pruners/: masks, saliency, channel
groups); it reduces what ranks measured, logs what was decided and keeps it all in checkpoints.
"""

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_prune.controller import RatioController
from lightning_prune.decision import Decisions, checkpoint_state
from lightning_prune.guard import Guard
from lightning_prune.inputs import candidate_inputs
from lightning_prune.logs import decision_metrics, log_decision, log_final
from lightning_prune.pacing import resolve_pace_by
from lightning_prune.pruners import make_pruner
from lightning_prune.schedule import DEFAULT_END_FRACTION, Clock, PruningWindow
from lightning_prune.settings import SettingsView
from lightning_prune.signals import PacingSignals, guard_value, reduce_mean
from lightning_prune.validation import check_bool, check_name

__all__ = ["DEFAULT_END_FRACTION", "RealTimePruningCallback", "checkpoint_state"]


class RealTimePruningCallback(SettingsView, Callback):
    r"""Prune a network during training, adapting the pace to the monitored loss and the gradient norm.

    Every optimizer step it measures the total gradient norm and, near a decision, folds the gradients into the
    weights' saliency (no extra forward pass); cut weights stay exactly zero. Every ``interval`` epochs (or steps) the
    controller decides to prune faster, slower, undo the last cut or pause, and the least salient ``ratio`` of the
    remaining prunable weights go, ranked globally (``mode="structured"``: whole channels and hidden units). In guard
    mode it decides after each validation run instead: a search for the sparsity the guard metric allows.

    Args:
        mode: ``"unstructured"`` (single weights) or ``"structured"`` (channels, neurons, hidden units and all that is
            coupled to them).
        importance: ``"taylor"`` (running ``|w*grad|``), ``"gradient"`` (running ``|grad|``) or ``"magnitude"``.
        target_sparsity: Share of the budget (weights, or MACs) to remove by ``end_epoch``, in [0, 1); None: as far
            as the pace and the guard allow.
        initial_ratio, min_ratio, max_ratio, growth, shrink, loss_tolerance, rollback, rollback_tolerance, cooldown,
            grad_damping, damage_tolerance: The pace (:class:`~lightning_prune.controller.RatioController`).
        interval, interval_unit, start_epoch, end_epoch: The window (:class:`~lightning_prune.schedule.PruningWindow`);
            ``end_epoch`` defaults to 80% of ``max_epochs`` (or of the epochs ``max_steps`` takes).
        monitor: None: the loss ``training_step`` returns (or the one ``*loss`` it logs, if it returns nothing); a
            name: that logged metric, averaged over the interval when logged per step.
        pace_by: ``"loss"``, ``"damage"`` (the last cut's damage on a probe) or ``"guard"`` (a line search on the
            guard's verdicts), see ``pacing.py``; None: ``"guard"`` with a ``guard``, else ``"loss"``.
        min_layer_density, normalize_per_layer, parameters, exclude, saliency_beta, saliency_every, shrink_when,
            budget: What is pruned and how it is ranked (:class:`~lightning_prune.pruners.Pruner`); ``budget="flops"``
            counts MACs (structured mode).
        guard, guard_mode, max_drop: Guard mode (:class:`~lightning_prune.guard.Guard`): a cut after which the logged
            ``guard`` metric ends up more than ``max_drop`` worse than its reference, beyond its own noise, is undone.
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
        pace_by: str | None = None,
        damage_tolerance: float = 0.01,
        shrink_when: str = "during",
        budget: str = "weights",
        guard: str | None = None,
        guard_mode: str = "max",
        max_drop: float = 0.0,
        log_layers: bool = False,
        verbose: bool = False,
    ) -> None:
        self.window = PruningWindow(start_epoch, end_epoch, interval, interval_unit)
        guard_ = Guard(guard, guard_mode, max_drop)
        controller = RatioController(
            initial_ratio=initial_ratio, min_ratio=min_ratio, max_ratio=max_ratio, growth=growth, shrink=shrink,
            loss_tolerance=loss_tolerance, rollback=rollback, rollback_tolerance=rollback_tolerance,
            cooldown=cooldown, target_sparsity=target_sparsity, grad_damping=grad_damping,
            pace_by=resolve_pace_by(pace_by, guard_.metric), damage_tolerance=damage_tolerance,
        )  # fmt: skip
        self.pruner = make_pruner(
            mode, shrink_when, budget, importance=importance, saliency_beta=saliency_beta,
            saliency_every=saliency_every, min_layer_density=min_layer_density, normalize_per_layer=normalize_per_layer,
            parameters=parameters, exclude=exclude,
        )  # fmt: skip
        self.decisions = Decisions(controller, guard_, self.window)
        self._signals = PacingSignals(check_name("monitor", monitor, "a logged metric"), self.window.per_step)
        self.log_layers, self.verbose = check_bool("log_layers", log_layers), check_bool("verbose", verbose)
        self.final_profile: dict[str, float] | None = None
        self._pending_state: dict[str, Any] | None = None
        self._trained: list[torch.nn.Parameter] = []  # whose gradient norm is measured, listed once per fit
        self._batch_idx = 0

    controller = property(lambda self: self.decisions.controller, doc="The ratio controller.")
    guard = property(lambda self: self.decisions.guard, doc="The guard (its metric None: every cut is kept).")

    # -- public read-outs -----------------------------------------------------------------------------------------

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mode=self.mode, monitor=self.monitor, parameters=self.parameters,
                                        exclude=self.exclude)  # fmt: skip

    @property
    def sparsity(self) -> float:
        """Fraction of the prunable weights that are zero now, or removed (structured), against their number before
        pruning; 0.0 before the fit starts."""
        return self.pruner.sparsity

    @property
    def ratio(self) -> float:
        """The controller's current ratio: the fraction of the remaining weights the next cut starts from."""
        return self.controller.ratio

    history = property(lambda self: self.decisions.history, doc="One entry per interval: what it saw and did.")
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
        self._signals.check_loss_source(pl_module, len(trainer.optimizers))

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        # after any checkpoint was restored, whichever the strategy's order of restoring and on_fit_start; the data is
        # known now: say at once when the window can never open or the target cannot be reached
        for problem in self.decisions.start(trainer, _clock(trainer, 0), self.min_layer_density):
            rank_zero_warn(f"RealTimePruningCallback: {problem}")
        if self.verbose:
            weights = f"{len(self.pruner.prunable)} tensors ({self.pruner.initial_weights:,} weights)"
            rank_zero_info(f"RealTimePruningCallback ({self.mode}): pruning {weights}, epochs [{self.start_epoch}, "
                           f"{self.end_epoch})")  # fmt: skip

    # -- per step: cheap, in place --------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule", batch: Any, batch_idx: int):
        self._batch_idx = batch_idx
        if not self.pruner.candidates:
            self.pruner.prepare(candidate_inputs(batch, pl_module), self.target_sparsity)
        self.decisions.capture_probe(batch, self.pruner)

    def on_train_epoch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._signals.on_epoch_start(trainer.callback_metrics)

    def on_before_optimizer_step(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", optimizer: torch.optim.Optimizer
    ) -> None:
        # gradients here are final: unscaled under AMP, all-reduced under DDP. The gradient norm is measured at every
        # step (one fused pass, no host sync); the saliency only every few steps near a decision: the running score
        # forgets at rate beta, so steps further away than its horizon barely count
        if self.decisions.done:
            return
        horizon = self.pruner.saliency.horizon * max(1, trainer.accumulate_grad_batches)
        near = self.decisions.near_next(_clock(trainer, self._batch_idx + 1), horizon)
        scored = near and trainer.global_step % self.saliency_every == 0
        finite = self._signals.after_gradients(self._trained, verdict=scored)
        if not scored:
            self.pruner.score(fold_in=False)
        elif finite:  # a step with non-finite gradients (what GradScaler skips) is one that did not happen
            self.pruner.score(fold_in=self.window.contains(trainer.current_epoch))

    def on_train_batch_end(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.pruner.after_step()
        if (said := self._signals.after_batch(outputs, trainer.callback_metrics)) is not None:
            rank_zero_info(said)
        step, last = trainer.global_step, self.history[-1]["step"] if self.history else -1
        due = self.decisions.validated if self.decisions.paced_by_guard else self.window.decides_after_step(step)
        if due and step != last:
            self._run_interval(trainer, pl_module, mid_epoch=True)

    # -- per interval ---------------------------------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        guided = self.decisions.paced_by_guard
        if self.decisions.validated if guided else self.window.decides_after_epoch(trainer.current_epoch):
            self._run_interval(trainer, pl_module, mid_epoch=False)

    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self.guard.metric is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self.guard.observe(reduce_mean(trainer.strategy, guard_value(self.guard.metric, trainer.callback_metrics)))
        self.decisions.validated = True

    def _run_interval(self, trainer: "L.Trainer", pl_module: "L.LightningModule", mid_epoch: bool) -> None:
        signals = self._signals.take(trainer.strategy, trainer.callback_metrics, at_epoch_end=not mid_epoch)
        clock = _clock(trainer, trainer.num_training_batches if not mid_epoch else self._batch_idx + 1)
        entry = self.decisions.run(trainer, pl_module, self.pruner, signals, clock)
        for warning in self.decisions.warnings:
            rank_zero_warn(warning)
        readouts = self.pruner.readouts(self.log_layers, entry["sparsity"])
        log_decision(trainer, pl_module, decision_metrics(entry, self._signals.skipped_steps, readouts), mid_epoch)
        if self.verbose:
            rank_zero_info(
                f"pruning @ epoch {entry['epoch']} step {entry['step']}: {entry['action']} "
                f"({entry['reason']}), ratio {entry['ratio']:.4f}, sparsity {entry['sparsity']:.4f}"
            )

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if (reason := self.decisions.finish(trainer, self.pruner)) is not None:
            rank_zero_warn(f"RealTimePruningCallback: {reason}.")
        self.pruner.finish(trainer)

    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        """Profile the final model (structured: its compact export) and hand the figures to every logger."""
        if trainer.is_global_zero:
            self.final_profile = self.pruner.final_profile(pl_module)
            log_final(trainer, self.final_profile)

    def teardown(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        self.pruner.teardown(pl_module)

    # -- persistence ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        decision = {**self.decisions.state_dict(), "signals": self._signals.state_dict()}
        return {"decision": decision, "pruner": self.pruner.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.pruner.masks is None:
            # Lightning restores callbacks after setup(); if called earlier, apply the state once the model is known
            self._pending_state = state_dict
            return
        self._restore(state_dict)

    def _restore(self, state: dict[str, Any]) -> None:
        state = checkpoint_state(state)
        decision = state["decision"]
        if changed := self.decisions.load_state_dict(decision):
            rank_zero_warn(
                f"RealTimePruningCallback: resuming with changed settings, which apply from now on: {changed}."
            )
        if "signals" in decision:
            self._signals.load_state_dict(decision["signals"])
        self.pruner.load_state_dict(state["pruner"])


def _clock(trainer: "L.Trainer", batches_done: int) -> Clock:
    return Clock(trainer.current_epoch, trainer.global_step, batches_done, trainer.num_training_batches,
                 trainer.accumulate_grad_batches, trainer.val_check_batch or math.inf, trainer.check_val_every_n_epoch,
                 trainer.max_epochs, trainer.max_steps)  # fmt: skip
