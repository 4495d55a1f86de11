"""RealTimePruningCallback: prunes while the model trains, paced by the logged loss and the gradients.

The callback is thin: it wires Lightning's hooks to the saliency (importance.py), the pacing (controller.py) and the
masks (masks.py), keeps their state in checkpoints, and logs what it did.
"""

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_prune import structured
from lightning_prune.controller import Action, Decision, RatioController, cuts_to_target
from lightning_prune.importance import IMPORTANCE_METHODS, Saliency
from lightning_prune.masks import PruningMasks, prunable_weights
from lightning_prune.profiling import profile

MODES = ("unstructured", "structured")
INTERVAL_UNITS = ("epoch", "step")
SHRINK_WHEN = ("during", "end")
# layers whose parameters structured mode may mask
STRUCTURED_LAYERS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear, torch.nn.LSTM,
                     torch.nn.modules.batchnorm._BatchNorm)  # fmt: skip
# the default end of the pruning window, as a fraction of max_epochs: the rest of the run recovers accuracy
DEFAULT_END_FRACTION = 0.8


class RealTimePruningCallback(Callback):
    r"""Prune a network during training, adapting the pace to the monitored loss and the gradient norm.

    Every optimizer step it accumulates the weights' saliency from the gradients (no extra forward pass) and keeps
    cut weights at exactly zero. Every ``interval`` epochs (or steps) it reads ``monitor`` from the logged metrics,
    lets the controller choose to prune faster, slower, undo the last cut or pause, and cuts the least salient
    ``ratio`` of the remaining prunable weights, globally across layers.

    Args:
        mode: ``"unstructured"`` (single weights) or ``"structured"`` (whole conv channels, fc neurons and LSTM
            hidden units, with everything coupled to them).
        importance: ``"taylor"`` (running ``|w*grad|``), ``"gradient"`` (running ``|grad|``) or ``"magnitude"``.
        target_sparsity: Fraction of prunable weights to remove by ``end_epoch``, in [0, 1); None adapts under the
            loss guard only.
        initial_ratio: The first cut, as a fraction of the remaining weights, in (0, 1].
        min_ratio: Lower bound of the ratio, in [0, 1].
        max_ratio: Upper bound of the ratio, in [0, 1], at least ``min_ratio``.
        growth: Ratio multiplier while the loss holds, >= 1.
        shrink: Ratio multiplier when the loss rises, in (0, 1].
        interval: Prune every this many epochs or optimizer steps, >= 1.
        interval_unit: ``"epoch"`` or ``"step"``.
        start_epoch: First epoch (0-based) at whose intervals pruning may happen.
        end_epoch: Pruning happens before this epoch; default 80% of ``max_epochs``.
        monitor: The logged metric that paces pruning (the module's epoch-mean training loss by default).
        loss_tolerance: Relative rise of ``monitor`` still counted as "the loss held", >= 0.
        rollback: Undo the last cut when the loss rises by more than ``rollback_tolerance``.
        rollback_tolerance: Relative rise that triggers a rollback, >= 0.
        cooldown: Intervals to pause after a rollback, >= 0.
        min_layer_density: No weight tensor keeps fewer than this fraction of its entries, in [0, 1].
        normalize_per_layer: Divide the saliency by each layer's mean before ranking globally, so every layer loses
            about the same fraction (the default); False ranks the raw saliency, so the layers that matter least by
            its measure lose the most (closer to global magnitude pruning).
        parameters: Glob patterns of parameter names to prune instead of the default choice (Conv/Linear/LSTM/GRU
            weights but the final classifier).
        exclude: Glob patterns of parameter names never to prune.
        saliency_beta: Per-step smoothing of the running saliency, in [0, 1).
        grad_damping: The ratio is scaled down when the gradient norm exceeds this multiple of its mean, >= 1.
        shrink_when: Structured mode only: ``"during"`` removes cut channels physically at the next interval (once they
            can no longer be rolled back), so training gets cheaper as it goes; ``"end"`` keeps them masked and
            leaves the compaction to :meth:`export`.
        log_layers: Also log each weight's sparsity as ``pruning/layer/<name>``.
        verbose: Print each interval's decision.

    Raises:
        ValueError: A setting outside its range, named with the range.

    Example:
        >>> import lightning as L
        >>> pruning = RealTimePruningCallback(target_sparsity=0.9)
        >>> trainer = L.Trainer(callbacks=[pruning], max_epochs=10, logger=False, enable_checkpointing=False)
        >>> pruning.sparsity, pruning.ratio
        (0.0, 0.01)
        >>> RealTimePruningCallback(growth=0.5)
        Traceback (most recent call last):
        ...
        ValueError: `growth` must be in [1, inf], got 0.5
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
        monitor: str = "train_loss",
        loss_tolerance: float = 0.02,
        rollback: bool = True,
        rollback_tolerance: float = 0.10,
        cooldown: int = 1,
        min_layer_density: float = 0.02,
        normalize_per_layer: bool = True,
        parameters: list[str] | None = None,
        exclude: list[str] | None = None,
        saliency_beta: float = 0.99,
        grad_damping: float = 2.0,
        shrink_when: str = "during",
        log_layers: bool = False,
        verbose: bool = False,
    ) -> None:
        _check_choice("mode", mode, MODES)
        _check_choice("importance", importance, IMPORTANCE_METHODS)
        _check_choice("interval_unit", interval_unit, INTERVAL_UNITS)
        _check_choice("shrink_when", shrink_when, SHRINK_WHEN)
        _check_int("interval", interval, 1)
        _check_int("start_epoch", start_epoch, 0)
        if end_epoch is not None:
            _check_int("end_epoch", end_epoch, start_epoch + 1)
        if not 0 <= min_layer_density <= 1:
            raise ValueError(f"`min_layer_density` must be in [0, 1], got {min_layer_density!r}")
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` must be the name of a logged metric, got {monitor!r}")
        if not 0 <= saliency_beta < 1:
            raise ValueError(f"`saliency_beta` must be in [0, 1), got {saliency_beta!r}")
        for name, patterns in (("parameters", parameters), ("exclude", exclude)):
            if patterns is not None and (isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns)):
                raise ValueError(f"`{name}` must be a list of glob patterns (strings), got {patterns!r}")
        self.controller = RatioController(
            initial_ratio=initial_ratio, min_ratio=min_ratio, max_ratio=max_ratio, growth=growth, shrink=shrink,
            loss_tolerance=loss_tolerance, rollback=rollback, rollback_tolerance=rollback_tolerance,
            cooldown=cooldown, target_sparsity=target_sparsity, grad_damping=grad_damping,
        )  # fmt: skip
        self.mode = mode
        self.importance = importance
        self.target_sparsity = target_sparsity
        self.interval = interval
        self.interval_unit = interval_unit
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.monitor = monitor
        self.min_layer_density = min_layer_density
        self.normalize_per_layer = bool(normalize_per_layer)
        self.parameters = list(parameters) if parameters is not None else None
        self.exclude = list(exclude) if exclude is not None else None
        self.saliency_beta = saliency_beta
        self.shrink_when = shrink_when
        self.log_layers = log_layers
        self.verbose = verbose

        self.history: list[dict[str, Any]] = []
        self.masks: PruningMasks | None = None
        self.saliency: Saliency | None = None
        self._pending_state: dict[str, Any] | None = None
        self._grad_norm_sum: torch.Tensor | None = None
        self._grad_norm_steps = 0
        self._loss_sum: torch.Tensor | None = None
        self._loss_steps = 0
        self._done = False
        # what sparsity is measured against: the prunable weights' names and their count before any pruning
        self._prunable: list[str] = []
        self._initial_weights = 0
        # a few samples of the first batch: traced to find channel groups, and kept for export
        self.example_input: structured.Inputs | None = None
        self._module: L.LightningModule | None = None
        self.final_profile: dict[str, float] | None = None
        self._trained: list[torch.nn.Parameter] = []  # whose gradient norm is tracked, listed once per fit
        self._batch_idx = 0

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
        if self.masks is None or not self._initial_weights:
            return 0.0
        return 1 - structured.count_weights(self._prunable_now(), self._prunable) / self._initial_weights

    def _prunable_now(self) -> dict[str, torch.Tensor]:
        return {name: self.masks.weights[name] for name in self._prunable if name in self.masks.weights}

    def export(self, module: torch.nn.Module) -> torch.nn.Module:
        """A compact dense copy of ``module`` (the original is untouched) without the channels whose outputs are
        exactly zero: in structured mode every cut channel, so the copy computes what the pruned model computes.

        The copy is traced with the example input captured from the first training batch (or
        ``module.example_input_array``).
        """
        example = self.example_input if self.example_input is not None else getattr(module, "example_input_array", None)
        if example is not None:
            example = _to_device_of(module, example)
        return structured.compact_copy(module, example, self._roots(module))

    @property
    def ratio(self) -> float:
        """The controller's current ratio: the fraction of remaining weights the next cut starts from."""
        return self.controller.ratio

    # -- setup ---------------------------------------------------------------------------------------------------

    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        if stage != "fit" or self.masks is not None:
            return
        if self.mode == "structured" and self.shrink_when == "during" and trainer.world_size > 1:
            raise ValueError(
                "mode='structured' with shrink_when='during' rebuilds the model while it trains, which DDP cannot "
                "follow; use shrink_when='end' (channels masked, compacted by export) under multi-device strategies"
            )
        weights = prunable_weights(pl_module, self.parameters, self.exclude)
        self._prunable = list(weights)
        self._initial_weights = sum(w.numel() for w in weights.values())
        self._module = pl_module
        self._build_state_holders(pl_module)
        if self.mode == "structured":
            _resize_before_loading(pl_module)
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None

    def _build_state_holders(self, pl_module: "L.LightningModule") -> None:
        """Masks and saliency over the module's current parameters (again after a resize or a shrink)."""
        if self.mode == "unstructured":
            prunable = set(self._prunable)
            weights = {name: p for name, p in pl_module.named_parameters() if name in prunable}
            self.masks = PruningMasks(weights)
            self.saliency = Saliency(weights, self.importance, self.saliency_beta)
            return
        # structured: a channel's slices live in weights, biases and batch-norm affine parameters
        owners = {}
        for module_name, module in pl_module.named_modules():
            if isinstance(module, STRUCTURED_LAYERS):
                prefix = f"{module_name}." if module_name else ""
                owners.update({prefix + n: p for n, p in module.named_parameters(recurse=False)})
        self.masks = PruningMasks(owners)
        scored = {n: p for n, p in owners.items() if n.rsplit(".", 1)[-1].startswith("weight") and p.dim() > 1}
        self.saliency = Saliency(scored, self.importance, self.saliency_beta)

    def _roots(self, module: torch.nn.Module) -> list[str]:
        """Modules whose output channels may be cut: the owners of the prunable weights."""
        roots = []
        for name in self._prunable or list(prunable_weights(module, self.parameters, self.exclude)):
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            if owner not in roots:
                roots.append(owner)
        return roots

    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        # setup() ran before the strategy moved the model to its device: bring the per-weight buffers along
        self.masks.follow_weights()
        self.saliency.follow_weights()
        self._trained = [p for p in pl_module.parameters() if p.requires_grad]
        if self.end_epoch is None:
            max_epochs = trainer.max_epochs
            if max_epochs is None or max_epochs < 0:
                raise ValueError(
                    "RealTimePruningCallback needs `end_epoch` when the Trainer has no `max_epochs` "
                    f"(got max_epochs={max_epochs})"
                )
            self.end_epoch = max(self.start_epoch + 1, int(DEFAULT_END_FRACTION * max_epochs))
        self._warn_if_target_is_out_of_reach(trainer)
        if self.verbose:
            rank_zero_info(
                f"RealTimePruningCallback ({self.mode}): pruning {len(self._prunable)} weight tensors "
                f"({self._initial_weights:,} weights), epochs [{self.start_epoch}, {self.end_epoch})"
            )

    def _warn_if_target_is_out_of_reach(self, trainer: "L.Trainer") -> None:
        target, max_ratio = self.target_sparsity, self.controller.max_ratio
        if target is not None and target > 1 - self.min_layer_density:
            rank_zero_warn(
                f"RealTimePruningCallback: target_sparsity={target} cannot be reached while min_layer_density="
                f"{self.min_layer_density} keeps that share of every layer (at most {1 - self.min_layer_density:.4f}). "
                "Lower `min_layer_density`."
            )
        if target is None or self.interval_unit != "epoch":
            return
        intervals = sum(1 for e in range(self.start_epoch, self.end_epoch) if (e + 1) % self.interval == 0)
        if cuts_to_target(0.0, target, max_ratio) > intervals + 1e-9:
            reachable = 1 - (1 - max_ratio) ** intervals
            rank_zero_warn(
                f"RealTimePruningCallback: target_sparsity={target} cannot be reached in the {intervals} pruning "
                f"interval(s) before end_epoch={self.end_epoch} at max_ratio={max_ratio} (at most {reachable:.4f}). "
                "Raise `max_ratio`, `end_epoch` or the Trainer's `max_epochs`."
            )

    # -- per step: cheap, in place --------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule", batch: Any, batch_idx: int):
        self._batch_idx = batch_idx
        if self.example_input is None:
            self.example_input = structured.as_inputs(batch)
            if self.example_input is None:
                self.example_input = getattr(pl_module, "example_input_array", None)

    def on_before_optimizer_step(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", optimizer: torch.optim.Optimizer
    ) -> None:
        # gradients here are final: unscaled under AMP, all-reduced under DDP
        self.masks.mask_gradients()
        if not self._near_decision(trainer):
            self.saliency.skip()
            return
        if not self._done and self._in_window(trainer.current_epoch):
            self.saliency.update()
        grads = [p.grad for p in self._trained if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            self._grad_norm_sum = norm.detach() if self._grad_norm_sum is None else self._grad_norm_sum + norm
            self._grad_norm_steps += 1

    def on_train_batch_end(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.masks.apply()
        if self.interval_unit != "step":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None:
            self._loss_sum = value.detach() if self._loss_sum is None else self._loss_sum + value.detach()
            self._loss_steps += 1
        step = trainer.global_step
        if step > 0 and step % self.interval == 0 and step != self._last_interval_step():
            self._run_interval(trainer, pl_module)

    # -- per interval ---------------------------------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self.interval_unit == "epoch" and (trainer.current_epoch + 1) % self.interval == 0:
            self._run_interval(trainer, pl_module)

    def _run_interval(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        epoch = trainer.current_epoch
        loss = self._synchronised_loss(trainer)
        grad_norm = self._interval_grad_norm(trainer)
        sparsity_before = self.sparsity
        if self._done:
            decision = Decision(Action.DONE, 0.0, "done")
        elif epoch < self.start_epoch:
            decision = Decision(Action.PAUSE, 0.0, f"waiting for start_epoch={self.start_epoch}")
        else:
            decision = self.controller.step(
                loss, grad_norm, sparsity_before, self._intervals_left(trainer), self._resolution(pl_module)
            )
            if not math.isfinite(loss):
                rank_zero_warn(f"RealTimePruningCallback: the monitored `{self.monitor}` is non-finite ({loss}): NaN "
                               "or infinite losses are never pruned on; pausing this interval.")  # fmt: skip
        changed = self._act(trainer, pl_module, decision, sparsity_before)
        self._done = self._done or decision.action == Action.DONE
        entry = {
            "epoch": epoch,
            "step": trainer.global_step,
            "loss": loss,
            "grad_norm": grad_norm,
            "ratio": decision.ratio,
            "pruned": changed,
            "sparsity": self.sparsity,
            "action": decision.action.name.lower(),
            "reason": decision.reason,
        }
        self.history.append(entry)
        self._log(pl_module, entry, decision.action)
        if self.verbose:
            rank_zero_info(
                f"pruning @ epoch {epoch} step {entry['step']}: {entry['action']} ({decision.reason}), "
                f"ratio {decision.ratio:.4f}, sparsity {entry['sparsity']:.4f}"
            )

    def _act(self, trainer: "L.Trainer", pl_module: "L.LightningModule", decision: Decision, sparsity: float) -> int:
        """Carry out the decision; returns the weights cut (negative: restored)."""
        masks = self.masks
        if decision.action == Action.ROLLBACK:
            changed = -masks.undo_last_cut()
            masks.refresh()
            return changed
        if self.mode == "structured" and self.shrink_when == "during":
            # the previous cut survived its interval: now it can go for real
            self._shrink(trainer, pl_module)
            masks = self.masks
        if not decision.prunes:
            return 0
        count = self._cut_count(decision.ratio, sparsity)
        if self.mode == "unstructured":
            selection = masks.select(self.saliency.scores(), count, self.min_layer_density, self.normalize_per_layer)
        else:
            selection = self._select_channels(pl_module, count)
        # under DDP every rank must hold rank 0's masks, bit for bit
        selection = trainer.strategy.broadcast(selection, src=0)
        before = structured.count_weights(self._prunable_now(), self._prunable)
        masks.cut(selection, trainer.optimizers)
        masks.refresh()
        return before - structured.count_weights(self._prunable_now(), self._prunable)

    def _groups(self, pl_module: "L.LightningModule"):
        classifier = structured.last_linear(pl_module)
        return structured.find_groups(pl_module, self.example_input, self._roots(pl_module), classifier)

    def _select_channels(self, pl_module: "L.LightningModule", count: int) -> dict[str, torch.Tensor]:
        """Whole channels, lowest group saliency first, holding about ``count`` prunable weights."""
        groups, _ = self._groups(pl_module)
        scores = self.saliency.scores()
        weights = self._prunable_now()
        chosen = structured.select_channels(
            groups,
            [structured.channel_scores(g, scores) for g in groups],
            [structured.channel_cost(g, weights) for g in groups],
            [structured.removed_channels(g, self.masks.pruned) for g in groups],
            budget=count,
            min_layer_density=self.min_layer_density,
            normalize_per_layer=self.normalize_per_layer,
        )
        by_name = {g.name: g for g in groups}
        selection: dict[str, torch.Tensor] = {}
        for name, channels in chosen.items():
            for param, flat in structured.channel_elements(by_name[name], channels, self.masks.weights).items():
                selection[param] = flat if param not in selection else torch.unique(torch.cat([selection[param], flat]))
        # only what is not cut yet: the masks remember values for a rollback
        return {p: i[~self.masks.pruned[p].view(-1)[i]] for p, i in selection.items()}

    def _shrink(self, trainer: "L.Trainer", pl_module: "L.LightningModule", rebuild_optimizer: bool = True) -> None:
        """Physically remove every masked channel; carry masks, saliency and optimizer state over by slicing."""
        groups, graph = self._groups(pl_module)
        remove = {}
        for group in groups:
            gone = structured.removed_channels(group, self.masks.pruned)
            if gone.all():
                gone[0] = False
            if gone.any():
                remove[group.name] = gone.nonzero().squeeze(1)
        if not remove:
            return
        old_states = _optimizer_states_by_name(trainer, pl_module) if rebuild_optimizer else []
        old_masks, old_saliency = self.masks, self.saliency
        slices = structured.remove_channels(pl_module, groups, remove, graph)
        self._build_state_holders(pl_module)
        for name, pruned in old_masks.pruned.items():
            self.masks.pruned[name] = structured.slice_like(pruned, slices.get(name, []))
        self.masks.refresh()
        self.saliency.updates = old_saliency.updates
        for name, running in old_saliency.running.items():
            self.saliency.running[name] = structured.slice_like(running, slices.get(name, []))
        self._trained = [p for p in pl_module.parameters() if p.requires_grad]
        if rebuild_optimizer:
            _rebuild_optimizers(trainer, pl_module, old_states, slices)

    def _resolution(self, pl_module: "L.LightningModule") -> float:
        """The smallest possible change of sparsity: one weight, or (structured) the cheapest channel."""
        if self.mode == "unstructured" or not self._initial_weights:
            return 1 / max(self._initial_weights, 1)
        groups, _ = self._groups(pl_module)
        weights = self._prunable_now()
        cheapest = min((float(structured.channel_cost(g, weights).min()) for g in groups), default=1.0)
        return cheapest / self._initial_weights

    def _cut_count(self, ratio: float, sparsity: float) -> int:
        total = self._initial_weights
        remaining = round((1 - sparsity) * total)
        count = round(ratio * remaining)
        if self.target_sparsity is not None:
            # whole weights: the cut that reaches the target reaches it (ceil), by less than one weight over
            needed = math.ceil(self.target_sparsity * total - 1e-9) - (total - remaining)
            count = needed if ratio * remaining >= needed - 1 else min(count, needed)
        return max(count, 0)

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self.mode == "structured" and self.shrink_when == "during":
            # the last cut needs no more probation: leave fit with a compact model
            self._shrink(trainer, pl_module, rebuild_optimizer=False)

    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        """Profile the final model (structured: its compact export) and hand the figures to every logger."""
        if self.example_input is None or not trainer.is_global_zero:
            return
        final = self.export(pl_module) if self.mode == "structured" else pl_module
        # Lightning has moved the model back to the CPU by now; the example was captured on the training device
        self.final_profile = profile(final, _to_device_of(final, self.example_input))
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"pruning/final/{k}": float(v) for k, v in self.final_profile.items()}, trainer.global_step
            )

    def teardown(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        if "on_load_checkpoint" in vars(pl_module):
            del pl_module.on_load_checkpoint  # the wrapper installed in setup(): back to the class's own hook

    # -- signals --------------------------------------------------------------------------------------------------

    def _synchronised_loss(self, trainer: "L.Trainer") -> float:
        if self.interval_unit == "step" and self._loss_steps:
            value = self._loss_sum / self._loss_steps
            self._loss_sum, self._loss_steps = None, 0
        else:
            value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            available = sorted(trainer.callback_metrics)
            raise RuntimeError(
                f"RealTimePruningCallback could not read the monitored metric `{self.monitor}` at the end of the "
                f"pruning interval. Available metrics: {available}. Log it in your LightningModule with "
                f"`self.log({self.monitor!r}, loss, on_epoch=True)`, or pass `monitor=` one of the available names."
            )
        value = torch.as_tensor(value, dtype=torch.float32, device=trainer.strategy.root_device)
        # each rank logged its own shard's loss: decide on the mean, identically everywhere
        return float(trainer.strategy.reduce(value, reduce_op="mean"))

    def _interval_grad_norm(self, trainer: "L.Trainer") -> float | None:
        if not self._grad_norm_steps:
            return None
        mean = self._grad_norm_sum / self._grad_norm_steps
        self._grad_norm_sum, self._grad_norm_steps = None, 0
        # identical on every rank after the gradient all-reduce, up to float noise: reduce to be exact
        return float(trainer.strategy.reduce(mean, reduce_op="mean"))

    def _near_decision(self, trainer: "L.Trainer") -> bool:
        """Whether this step still weighs in the next decision. The running saliency forgets at rate ``beta``: a step
        more than ``4 / (1 - beta)`` steps before the decision keeps under e^-4 (2%) of its weight, so those steps are
        skipped, along with the gradient norm, and the per-step cost is paid only near each decision."""
        horizon = math.ceil(4 / (1 - self.saliency_beta) - 1e-9) * max(1, trainer.accumulate_grad_batches)
        if self.interval_unit == "step":
            return self.interval - trainer.global_step % self.interval <= horizon
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            return True
        epochs_after_this = self.interval - 1 - trainer.current_epoch % self.interval
        return (batches - self._batch_idx - 1) + epochs_after_this * batches < horizon

    def _in_window(self, epoch: int) -> bool:
        return self.start_epoch <= epoch < (self.end_epoch if self.end_epoch is not None else math.inf)

    def _intervals_left(self, trainer: "L.Trainer") -> int:
        """Pruning intervals from now to the end of the window, this one included."""
        epoch = trainer.current_epoch
        if self.interval_unit == "epoch":
            return sum(1 for e in range(epoch, self.end_epoch) if (e + 1) % self.interval == 0)
        if epoch >= self.end_epoch:
            return 0
        steps_per_epoch = max(1, trainer.estimated_stepping_batches // max(1, trainer.max_epochs or 1))
        last_step = self.end_epoch * steps_per_epoch
        step = trainer.global_step
        return max(0, last_step // self.interval - (step - 1) // self.interval)

    def _last_interval_step(self) -> int:
        return self.history[-1]["step"] if self.history else -1

    # -- logging --------------------------------------------------------------------------------------------------

    def _log(self, pl_module: "L.LightningModule", entry: dict[str, Any], action: Action) -> None:
        per_step = self.interval_unit == "step"
        params = list(pl_module.parameters())
        with torch.no_grad():
            nonzero = sum(int(p.count_nonzero()) for p in params)
        metrics = {
            "pruning/sparsity": entry["sparsity"],
            "pruning/ratio": entry["ratio"],
            "pruning/params_nonzero": float(nonzero),
            "pruning/params_total": float(sum(p.numel() for p in params)),
            "pruning/action": float(action),
        }
        if entry["grad_norm"] is not None:
            metrics["grad_norm/total"] = entry["grad_norm"]
        if self.example_input is not None:
            # MACs per sample, each layer discounted by its weight density (structured: of the shrunk model)
            metrics["pruning/flops"] = float(
                profile(pl_module, _to_device_of(pl_module, self.example_input), warmup=0, repeats=1)["flops_effective"]
            )
        if self.log_layers:
            for name, weight in self._prunable_now().items():
                metrics[f"pruning/layer/{name}"] = float((weight == 0).sum()) / weight.numel()
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=per_step, on_epoch=not per_step, sync_dist=False)

    # -- persistence ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = {"controller": self.controller.state_dict(), "history": list(self.history), "done": self._done,
                 "end_epoch": self.end_epoch, "initial_weights": self._initial_weights,
                 "example_input": self.example_input}  # fmt: skip
        if self.masks is not None:
            state["masks"] = self.masks.state_dict()
            state["saliency"] = self.saliency.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.masks is None:
            # Lightning restores callbacks after setup(); if called earlier, apply the state once the model is known
            self._pending_state = state_dict
            return
        self._restore(state_dict)

    def _restore(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.history = list(state["history"])
        self._done = state["done"]
        self.end_epoch = state["end_epoch"] if self.end_epoch is None else self.end_epoch
        self._initial_weights = state.get("initial_weights", self._initial_weights)
        if state.get("example_input") is not None:
            self.example_input = state["example_input"]
        if self.mode == "structured":
            # the model may have been resized from the checkpoint since setup(): hold its current parameters
            self._build_state_holders(self._module)
        if "masks" in state:
            self.masks.load_state_dict(state["masks"])
            self.saliency.load_state_dict(state["saliency"])


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")


def _to_device_of(module: torch.nn.Module, inputs: structured.Inputs) -> structured.Inputs:
    device = next(module.parameters()).device
    return tuple(t.to(device) for t in inputs) if isinstance(inputs, tuple) else inputs.to(device)


def _resize_before_loading(pl_module: "L.LightningModule") -> None:
    """``fit(ckpt_path=...)`` loads the weights before any callback sees the checkpoint: let the module's own
    ``on_load_checkpoint`` (which Lightning calls first) resize shrunk layers, for any LightningModule."""
    if "on_load_checkpoint" in vars(pl_module):
        return
    original = pl_module.on_load_checkpoint

    def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
        structured.match_architecture(pl_module, checkpoint["state_dict"])
        original(checkpoint)

    pl_module.on_load_checkpoint = on_load_checkpoint


def _optimizer_states_by_name(trainer: "L.Trainer", pl_module: "L.LightningModule") -> tuple[list, list]:
    """Each optimizer's per-parameter state keyed by parameter *name* (the objects are about to be replaced), its
    groups' hyperparameters, and the schedulers' states."""
    names = {id(p): n for n, p in pl_module.named_parameters()}
    optimizers = []
    for optimizer in trainer.optimizers:
        state = {names[id(p)]: dict(s) for p, s in optimizer.state.items() if id(p) in names}
        hyper = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        optimizers.append((state, hyper))
    schedulers = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]
    return optimizers, schedulers


def _rebuild_optimizers(
    trainer: "L.Trainer", pl_module: "L.LightningModule", saved: tuple[list, list], slices: structured.Slices
) -> None:
    """New optimizers over the shrunk parameters, keeping the survivors' state (Adam's moments sliced, not reset)."""
    optimizers, schedulers = saved
    trainer.strategy.setup_optimizers(trainer)
    params = dict(pl_module.named_parameters())
    for optimizer, (state, hyper) in zip(trainer.optimizers, optimizers, strict=False):
        for group, values in zip(optimizer.param_groups, hyper, strict=False):
            group.update(values)
        for name, entries in state.items():
            if name not in params:
                continue
            optimizer.state[params[name]] = {
                key: structured.slice_like(value, slices.get(name, []))
                if torch.is_tensor(value) and value.dim() > 0
                else value
                for key, value in entries.items()
            }
    for config, scheduler_state in zip(trainer.lr_scheduler_configs, schedulers, strict=False):
        config.scheduler.load_state_dict(scheduler_state)
