"""What the callback prunes with: single weights or whole channels, behind one interface.

The callback never asks which mode it runs in. It tells a pruner when a step happened (:meth:`Pruner.before_step`,
:meth:`Pruner.after_step`), when a decision is due (:meth:`Pruner.before_decision`, then :meth:`Pruner.prune` or
:meth:`Pruner.undo`) and when training ends (:meth:`Pruner.finish`); the pruner owns the masks and the saliency.

- :class:`UnstructuredPruner` masks single weights, ranked globally (``masks.py``).
- :class:`StructuredPruner` masks whole channels / hidden units with everything coupled to them, and removes them
  physically once a cut has survived an interval (``structured/``), rebuilding the optimizer (``optim.py``).
"""

import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_prune import checkpoints, structured
from lightning_prune.importance import Saliency
from lightning_prune.inputs import Inputs, to_device_of
from lightning_prune.layers import (
    channel_parameters,
    classifier_name,
    count_nonzero,
    excluded_names,
    owner_names,
    prunable_weights,
)
from lightning_prune.layers import sparsity as sparsity_of
from lightning_prune.masks import PruningMasks
from lightning_prune.optim import rebuild_optimizers, save_optimizers, slice_like
from lightning_prune.profiling import FlopsMeter

if TYPE_CHECKING:
    import lightning as L

SHRINK_WHEN = ("during", "end")


class Pruner:
    """The common part: which weights are prunable, sparsity against their initial count, the per-step upkeep of
    masks and saliency, and how many weights a ratio cuts.

    Args:
        importance: The saliency method (``importance.py``).
        saliency_beta: Per-step smoothing of the running saliency.
        min_layer_density: No prunable tensor (or channel group) keeps less than this share.
        normalize_per_layer: Rank saliency normalised per layer (or group) rather than raw.
        target_sparsity: The cut that reaches the target reaches it exactly, in whole weights.
        parameters: Glob patterns replacing the default prunable weights.
        exclude: Glob patterns of weights never to prune.
    """

    def __init__(
        self,
        importance: str,
        saliency_beta: float,
        min_layer_density: float,
        normalize_per_layer: bool,
        target_sparsity: float | None,
        parameters: list[str] | None,
        exclude: list[str] | None,
    ) -> None:
        self.importance = importance
        self.saliency_beta = saliency_beta
        self.min_layer_density = min_layer_density
        self.normalize_per_layer = normalize_per_layer
        self.target_sparsity = target_sparsity
        self.parameters = parameters
        self.exclude = exclude
        self.prunable: list[str] = []
        self.initial_weights = 0
        self.module: nn.Module | None = None
        self.masks: PruningMasks | None = None
        self.saliency: Saliency | None = None
        # a few samples of the first batch: traced to find channel groups, and kept for export
        self.example_input: Inputs | None = None
        self.candidates: list[Inputs] = []
        self.flops = FlopsMeter()

    # -- binding to a model -------------------------------------------------------------------------------------

    def setup(self, trainer: "L.Trainer", module: nn.Module) -> None:
        weights = prunable_weights(module, self.parameters, self.exclude)
        self.prunable = list(weights)
        self.initial_weights = sum(w.numel() for w in weights.values())
        self.module = module
        self._build_state()

    def _build_state(self) -> None:
        raise NotImplementedError

    def prepare(self, candidates: list[Inputs]) -> None:
        """Before the first training step: what the model may be called with (``inputs.candidate_inputs``), for
        tracing, FLOPs and export. Structured mode checks the model here."""
        self.candidates = candidates
        if self.example_input is None and candidates:
            self.example_input = candidates[0]

    def follow_device(self) -> None:
        """Move per-weight buffers to their weights' device (the strategy moves the model after setup)."""
        self.masks.follow_weights()
        self.saliency.follow_weights()

    def teardown(self, module: nn.Module) -> None:
        """Leave the user's module as it was given (structured mode wraps its ``on_load_checkpoint``)."""

    # -- read-outs ------------------------------------------------------------------------------------------------

    def prunable_now(self) -> dict[str, Tensor]:
        return {name: self.masks.weights[name] for name in self.prunable if name in self.masks.weights}

    @property
    def sparsity(self) -> float:
        """Fraction of the prunable weights that are zero now, or removed, against their number before pruning."""
        if self.masks is None:
            return 0.0
        return sparsity_of(count_nonzero(self.prunable_now()), self.initial_weights)

    @torch.no_grad()
    def readouts(self, per_layer: bool = False) -> dict[str, float]:
        """What the model looks like now, for the logs: its parameters (all, and non-zero), its effective MACs per
        sample (when a forward pass on an example input works) and, with ``per_layer``, each prunable weight's
        sparsity."""
        params = list(self.module.parameters())
        values = {
            "pruning/params_nonzero": float(sum(int(p.count_nonzero()) for p in params)),
            "pruning/params_total": float(sum(p.numel() for p in params)),
        }
        candidates = [self.example_input, *self.candidates] if self.example_input is not None else self.candidates
        flops = self.flops.measure(self.module, [to_device_of(self.module, c) for c in candidates])
        if flops is not None:
            values["pruning/flops"] = flops
        if per_layer:
            for name, weight in self.prunable_now().items():
                values[f"pruning/layer/{name}"] = 1 - float(weight.count_nonzero()) / weight.numel()
        return values

    def resolution(self) -> float:
        """The smallest possible change of sparsity."""
        return 1 / max(self.initial_weights, 1)

    # -- per step ---------------------------------------------------------------------------------------------------

    def before_step(self, score: bool) -> None:
        """Gradients are final: keep cut weights' gradients at zero; fold them into the saliency when ``score``."""
        self.masks.mask_gradients()
        if score:
            self.saliency.update()
        else:
            self.saliency.skip()

    def after_step(self) -> None:
        self.masks.apply()

    # -- per decision -----------------------------------------------------------------------------------------------

    def before_decision(self, trainer: "L.Trainer") -> None:
        """Whatever must happen at every decision before the cut (structured: remove what survived probation)."""

    def cut_count(self, ratio: float) -> int:
        """Whole weights for a cut of ``ratio`` of the remaining ones; the cut that reaches the target reaches it
        (ceil), by less than one weight over."""
        total = self.initial_weights
        remaining = round((1 - self.sparsity) * total)
        count = round(ratio * remaining)
        if self.target_sparsity is not None:
            needed = math.ceil(self.target_sparsity * total - 1e-9) - (total - remaining)
            count = needed if ratio * remaining >= needed - 1 else min(count, needed)
        return max(count, 0)

    def prune(self, trainer: "L.Trainer", ratio: float) -> int:
        """Cut ``ratio`` of the remaining prunable weights; return how many prunable weights went."""
        selection = self.select(self.cut_count(ratio))
        # under DDP every rank must hold rank 0's masks, bit for bit
        selection = trainer.strategy.broadcast(selection, src=0)
        before = count_nonzero(self.prunable_now())
        self.masks.cut(selection, trainer.optimizers)
        self.masks.refresh()
        return before - count_nonzero(self.prunable_now())

    def select(self, count: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def undo(self) -> int:
        """Restore the last cut; return how many weights came back."""
        restored = self.masks.undo_last_cut()
        self.masks.refresh()
        return restored

    def finish(self, trainer: "L.Trainer") -> None:
        """Training is over."""

    def final_model(self, module: nn.Module) -> nn.Module:
        """The model to profile at the end of fit."""
        return module

    def export(self, module: nn.Module) -> nn.Module:
        """A compact dense copy of ``module`` without the channels whose outputs are exactly zero."""
        example = self.example_input if self.example_input is not None else getattr(module, "example_input_array", None)
        if example is not None:
            example = to_device_of(module, example)
        roots = owner_names(self.prunable or prunable_weights(module, self.parameters, self.exclude))
        return structured.compact_copy(module, example, roots)

    # -- persistence ------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.masks.state_dict(), "saliency": self.saliency.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.masks.load_state_dict(state["masks"])
        self.saliency.load_state_dict(state["saliency"])


class UnstructuredPruner(Pruner):
    """Single weights, lowest saliency first, globally across layers (normalised per layer unless told not to)."""

    def _build_state(self) -> None:
        named = dict(self.module.named_parameters())
        weights = {name: named[name] for name in self.prunable}
        self.masks = PruningMasks(weights)
        self.saliency = Saliency(weights, self.importance, self.saliency_beta)

    def select(self, count: int) -> dict[str, Tensor]:
        return self.masks.select(self.saliency.scores(), count, self.min_layer_density, self.normalize_per_layer)


class StructuredPruner(Pruner):
    """Whole channels, fc neurons, attention dimensions and recurrent hidden units, with everything coupled to them.

    Before the first step (:meth:`prepare`) it finds the forward target and input that run, the channel groups, and
    the groups it must leave out (each warned about once, by layer path); only weights in a prunable group count as
    prunable. A cut is masked for one interval (so it can be rolled back), then removed for real at the next decision
    (``shrink_when="during"``), or kept masked until :meth:`export` (``"end"``).
    """

    def __init__(self, *args: Any, shrink_when: str = "during", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shrink_when = shrink_when
        self.plan: structured.Plan | None = None
        self._groups: tuple[list[structured.ChannelGroup], Any] | None = None
        self._groups_key: tuple = ()
        self._narrowed = False  # prunable / initial_weights count only the weights of prunable groups
        self._roots: list[str] = []  # the layers owning prunable weights, and the parameters never to cut
        self._excluded: list[str] = []

    def setup(self, trainer: "L.Trainer", module: nn.Module) -> None:
        if self.shrink_when == "during" and trainer.world_size > 1:
            raise ValueError(
                "mode='structured' with shrink_when='during' rebuilds the model while it trains, which DDP cannot "
                "follow; use shrink_when='end' (channels masked, compacted by export) under multi-device strategies"
            )
        super().setup(trainer, module)
        self._roots, self._excluded = owner_names(self.prunable), excluded_names(module, self.exclude)
        checkpoints.install_resize_hook(module)
        declared = getattr(module, "example_input_array", None)
        if torch.is_tensor(declared) or (isinstance(declared, tuple) and all(torch.is_tensor(t) for t in declared)):
            # the module says what it takes: check it now; if that fails, the first batch's inputs get their turn
            self._plan([declared], raise_if_empty=False)

    def teardown(self, module: nn.Module) -> None:
        checkpoints.remove_resize_hook(module)

    # -- before the first step -------------------------------------------------------------------------------------

    def prepare(self, candidates: list[Inputs]) -> None:
        """Find which candidate input (and forward target) runs, trace once, check every group, warn once per group
        left out, and count as prunable only the weights of the groups that are pruned.

        Raises:
            ValueError: Nothing at all can be pruned (the message names the layers, why, and what was tried).
        """
        self.candidates = candidates
        if self.plan is None or not self.plan.groups:
            self._plan(candidates, raise_if_empty=True)

    def _plan(self, candidates: list[Inputs], raise_if_empty: bool) -> None:
        examples = [to_device_of(self.module, c) for c in candidates]
        plan = structured.plan(self.module, examples, self._roots, classifier_name(self.module), self._excluded)
        if not plan.groups:
            if raise_if_empty:
                raise ValueError(structured.nothing_to_prune(plan))
            return
        self.plan, self.example_input = plan, plan.example
        for group in plan.skipped:
            warnings.warn(group.message(), stacklevel=3)
        self._groups, self._groups_key = (plan.groups, None), self._shape_key()
        self._narrow()
        self._carry_state(self.masks, self.saliency)

    def _narrow(self) -> None:
        """Only the weights of groups that are pruned count: the others (left out, or excluded) never shrink, so
        their numbers leave the initial count too, once (a restored count may have lost them already)."""
        members = self._member_names()
        if not self._narrowed:
            named = dict(self.module.named_parameters())
            self.initial_weights -= sum(named[n].numel() for n in self.prunable if n not in members and n in named)
            self._narrowed = True
        self.prunable = [n for n in self.prunable if n in members]

    def _member_names(self) -> set[str]:
        return {m.param for g in self.plan.groups for m in g.members}

    # -- masks and saliency over the groups' parameters ------------------------------------------------------------

    def _build_state(self) -> None:
        # a channel's slices live in weights, biases, norms, embeddings and parameters of other modules
        owned = channel_parameters(self.module)
        if self.plan is not None:
            members = self._member_names()
            owned = {n: p for n, p in owned.items() if n in members}
        self.masks = PruningMasks(owned)
        self.saliency = Saliency({n: p for n, p in owned.items() if p.dim() > 1}, self.importance, self.saliency_beta)

    def _carry_state(self, old_masks: PruningMasks, old_saliency: Saliency, slices: Mapping | None = None) -> None:
        """New masks and saliency over the current parameters, with the old ones' values (sliced after a shrink)."""
        slices = slices or {}
        self._build_state()
        for name, pruned in old_masks.pruned.items():
            if name in self.masks.pruned:
                self.masks.pruned[name] = slice_like(pruned, slices.get(name, []))
        if not slices:  # nothing changed shape: the last cut can still be undone
            self.masks.last_cut = {n: cut for n, cut in old_masks.last_cut.items() if n in self.masks.pruned}
        self.masks.refresh()
        self.saliency.updates, self.saliency.skipped = old_saliency.updates, old_saliency.skipped
        for name, running in old_saliency.running.items():
            if name in self.saliency.running:
                self.saliency.running[name] = slice_like(running, slices.get(name, []))
        self._refresh_norms()

    def _refresh_norms(self) -> None:
        """LayerNorm / GroupNorm layers ignore the masked channels (exactly what removing them will compute)."""
        if self.plan is not None:
            groups, _ = self.groups()
            gone = {g.name: structured.removed_channels(g, self.masks.pruned) for g in groups if g.norms}
            structured.refresh_norms(self.module, groups, gone)

    def groups(self) -> tuple[list[structured.ChannelGroup], Any]:
        """The groups that are pruned, traced once per model shape (again only after a shrink or a resize)."""
        if self.plan is None:
            self.prepare([self.example_input] if self.example_input is not None else self.candidates)
        key = self._shape_key()
        if self._groups is None or key != self._groups_key:
            self._groups, self._groups_key = (self._traced_groups(), None), key
        return self._groups

    def _shape_key(self) -> tuple:
        return id(self.module), tuple((n, tuple(p.shape)) for n, p in self.module.named_parameters())

    def _traced_groups(self) -> list[structured.ChannelGroup]:
        example = to_device_of(self.module, self.plan.example) if self.plan.example is not None else None
        classifier = classifier_name(self.module)
        groups, _ = structured.find_groups(self.module, example, self._roots, classifier, self.plan.target,
                                           self._excluded)  # fmt: skip
        keep = {g.name for g in self.plan.groups}
        return [g for g in groups if g.name in keep]

    def resolution(self) -> float:
        """The cheapest cut still possible as a share of the prunable weights; 1.0 when nothing more can go."""
        cheapest = structured.cheapest_cut(self.groups()[0], self.prunable_now(), self.masks.pruned,
                                           self.min_layer_density)  # fmt: skip
        return min(cheapest / max(self.initial_weights, 1), 1.0)

    # -- per decision ---------------------------------------------------------------------------------------------

    def select(self, count: int) -> dict[str, Tensor]:
        groups, _ = self.groups()
        return structured.select(
            groups,
            self.masks.weights,
            self.saliency.scores(),
            self.prunable_now(),
            budget=count,
            min_layer_density=self.min_layer_density,
            pruned=self.masks.pruned,
            normalize_per_layer=self.normalize_per_layer,
        )

    def prune(self, trainer: "L.Trainer", ratio: float) -> int:
        removed = super().prune(trainer, ratio)
        self._refresh_norms()
        return removed

    def undo(self) -> int:
        restored = super().undo()
        self._refresh_norms()
        return restored

    def before_decision(self, trainer: "L.Trainer") -> None:
        if self.shrink_when == "during":
            # the previous cut survived its interval: now it can go for real
            self.shrink(trainer)

    def finish(self, trainer: "L.Trainer") -> None:
        if self.shrink_when == "during":
            # the last cut needs no more probation: leave fit with a compact model
            self.shrink(trainer, rebuild_optimizer=False)

    def final_model(self, module: nn.Module) -> nn.Module:
        """The compact export; of a LightningModule without ``forward``, the part its inputs run through."""
        compact = self.export(module)
        return compact.get_submodule(self.plan.target) if self.plan is not None else compact

    def export(self, module: nn.Module) -> nn.Module:
        """A compact dense copy of ``module`` without the masked channels (traced as in training)."""
        if self.plan is None:
            return super().export(module)
        example = None if self.plan.example is None else to_device_of(module, self.plan.example)
        keep = {g.name for g in self.plan.groups}
        return structured.compact_copy(module, example, self._roots, self.plan.target, keep, self._excluded)

    def shrink(self, trainer: "L.Trainer", rebuild_optimizer: bool = True) -> None:
        """Physically remove every masked channel; carry masks, saliency and optimizer state over by slicing."""
        groups, _ = self.groups()
        remove = structured.removable(self.module, groups, self.masks.pruned)
        if not remove:
            return
        saved = save_optimizers(trainer, self.module) if rebuild_optimizer else None
        slices = structured.remove_channels(self.module, groups, remove)
        self._carry_state(self.masks, self.saliency, slices)
        if saved is not None:
            rebuild_optimizers(trainer, self.module, saved, slices)

    # -- persistence ------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **({"prunable": list(self.prunable)} if self._narrowed else {})}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # the model may have been resized from the checkpoint since setup(): hold its current parameters
        self._build_state()
        super().load_state_dict(structured.fit_saved_state(state, self.masks.pruned, self.saliency.running))
        if "prunable" in state:  # counted over the prunable groups already (and so is the restored initial count)
            self.prunable, self._narrowed = list(state["prunable"]), True
        elif self.plan is not None:  # an older checkpoint, with every weight counted
            self._narrowed = False
            self._narrow()
        self._refresh_norms()


def make_pruner(mode: str, shrink_when: str, **settings: Any) -> Pruner:
    if mode == "structured":
        return StructuredPruner(shrink_when=shrink_when, **settings)
    return UnstructuredPruner(**settings)


PRUNER_MODES = ("unstructured", "structured")
