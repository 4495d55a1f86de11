"""Whole channels and hidden units, with everything coupled to them (``structured/``): masked for one interval, then
removed physically, with the optimizer rebuilt (``optim.py``)."""

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_prune import checkpoints, structured
from lightning_prune.flops import count_macs
from lightning_prune.importance import Saliency
from lightning_prune.inputs import Inputs, to_device_of
from lightning_prune.layers import (
    channel_parameters,
    classifier_name,
    excluded_names,
    owner_names,
)
from lightning_prune.masks import PruningMasks
from lightning_prune.optim import rebuild_optimizers, save_optimizers, slice_like
from lightning_prune.pruners.base import Budget, Mode, Pruner, ShrinkWhen

if TYPE_CHECKING:
    import lightning as L


def refuse_averaged_copies(trainer: "L.Trainer", shrink_when: str) -> None:
    """StochasticWeightAveraging keeps an averaged copy of the model, parameter by parameter, which cannot follow
    channels removed while it trains (it failed with a size mismatch mid-training): refused before anything runs.

    Raises:
        ValueError: ``shrink_when="during"`` beside a StochasticWeightAveraging callback.
    """
    averaging = [type(c).__name__ for c in trainer.callbacks
                 if any(k.__name__ == "StochasticWeightAveraging" for k in type(c).__mro__)]  # fmt: skip
    if averaging and shrink_when == ShrinkWhen.DURING:
        raise ValueError(
            f"mode='structured' with shrink_when='during' removes channels while {averaging[0]} averages the model "
            "parameter by parameter into a copy that keeps the old shapes (it fails mid-training). Use "
            "shrink_when='end': channels are masked while training (the average keeps them at zero) and "
            "`export(module)` gives the compact model."
        )


class StructuredPruner(Pruner):
    """Whole channels, fc neurons, attention dimensions and recurrent hidden units, with everything coupled to them.

    Before the first step (:meth:`prepare`) it finds the forward target and input that run, the channel groups, and
    the groups it must leave out (each warned about once, by layer path). The target and ``sparsity`` count every
    prunable weight, as in unstructured mode: weights that no pruned group holds stay, the pruned groups are cut deeper
    to make up for them, and what that leaves of the target is said once at setup (``structured.reach``). A cut is
    masked for one interval (so it can be rolled back), then removed for real at the next decision
    (``shrink_when="during"``), or kept masked until :meth:`export` (``"end"``).

    With ``budget="flops"`` the ratio, every cut and the target count MACs per sample instead of weights (each weight
    standing for its layer's MACs per entry, measured once with ptflops on the example input), and channels go by
    saliency alone rather than per weight saved: every layer loses its least salient channels (a weight budget takes
    the late, wide layers first, which hold the weights but not the MACs).
    """

    mode = Mode.STRUCTURED

    def __init__(
        self, *args: Any, shrink_when: ShrinkWhen = ShrinkWhen.DURING, budget: Budget = Budget.WEIGHTS, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.shrink_when, self.budget = ShrinkWhen(shrink_when), Budget(budget)
        self.entry_macs: dict[str, float] | None = None  # budget="flops": MACs per sample of one entry, by weight
        self.initial_macs: float | None = None
        self.plan: structured.Plan | None = None
        self._groups: tuple[list[structured.ChannelGroup], Any] | None = None
        self._groups_key: tuple = ()
        # a checkpoint of a version that counted only the weights of pruned groups: the names it counted, until the
        # MACs of the others can be added back to its initial count (budget="flops")
        self._narrow_macs: list[str] | None = None
        self._roots: list[str] = []  # the layers owning prunable weights, and the parameters never to cut
        self._excluded: list[str] = []

    def setup(self, trainer: "L.Trainer", module: nn.Module) -> None:
        if self.shrink_when == ShrinkWhen.DURING and trainer.world_size > 1:
            raise ValueError(
                "mode='structured' with shrink_when='during' rebuilds the model while it trains, which DDP cannot "
                "follow; use shrink_when='end' (channels masked, compacted by export) under multi-device strategies"
            )
        refuse_averaged_copies(trainer, self.shrink_when)
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

    def prepare(self, candidates: list[Inputs], target: float | None = None) -> None:
        """Find which candidate input (and forward target) runs, trace once, check every group, warn once per group
        left out, and say once how much of ``target`` the pruned groups can reach over all prunable weights.

        Raises:
            ValueError: Nothing at all can be pruned (the message names the layers, why, and what was tried).
        """
        self.candidates = candidates
        if self.plan is None or not self.plan.groups:
            self._plan(candidates, raise_if_empty=True)
        reach = structured.reach_message(self.plan.groups, self.plan.skipped, self.prunable_now(), target,
                                         self.min_layer_density, self._entry_costs())  # fmt: skip
        if reach is not None:
            warnings.warn(reach, stacklevel=2)

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
        self._carry_state(self.masks, self.saliency)
        if self.budget == Budget.FLOPS:
            self._measure_macs(plan)

    def _measure_macs(self, plan: structured.Plan) -> None:
        """Each prunable weight's MACs per entry (they do not change as channels go); the initial total once (a
        resumed run restored it: its model may be shrunk already)."""
        target = self.module.get_submodule(plan.target)
        count = count_macs(target, plan.example if isinstance(plan.example, tuple) else (plan.example,))
        prefix = f"{plan.target}." if plan.target else ""
        self.entry_macs = {prefix + name: macs for name, macs in count.per_weight(target).items()}
        named = dict(self.module.named_parameters())
        if self.initial_macs is None:
            self.initial_macs = sum(self.entry_macs.get(n, 0.0) * named[n].numel() for n in self.prunable)
        self._widen_macs(named)

    def _widen_macs(self, named: Mapping[str, Tensor]) -> None:
        """A checkpoint that counted only the pruned groups' weights: add the others' MACs to its initial count
        (they never shrink, so their MACs now are their MACs then)."""
        if self._narrow_macs is not None and self.entry_macs is not None and self.initial_macs is not None:
            counted = set(self._narrow_macs)
            left_out = [n for n in self.prunable if n not in counted and n in named]
            self.initial_macs += sum(self.entry_macs.get(n, 0.0) * named[n].numel() for n in left_out)
            self._narrow_macs = None

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
        scored = {n: p for n, p in owned.items() if p.dim() > 1}
        self.saliency = Saliency(scored, self.importance, self.saliency_beta, self.saliency_every)

    def _carry_state(self, old_masks: PruningMasks, old_saliency: Saliency, slices: Mapping | None = None) -> None:
        """New masks and saliency over the current parameters, with the old ones' values (sliced after a shrink)."""
        slices = slices or {}
        self._build_state()
        for name, pruned in old_masks.pruned.items():
            if name in self.masks.pruned:
                self.masks.pruned[name] = slice_like(pruned, slices.get(name, []))
        if not slices:  # nothing changed shape: the last cut can still be undone
            self.masks.last_cut = {n: cut for n, cut in old_masks.last_cut.items() if n in self.masks.pruned}
        self.saliency.updates, self.saliency.skipped = old_saliency.updates, old_saliency.skipped
        for name, running in old_saliency.running.items():
            if name in self.saliency.weights:
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

    # -- the budget ---------------------------------------------------------------------------------------------

    def prunable_now(self) -> dict[str, Tensor]:
        """Every prunable weight as it is now, whether a pruned group holds it or not: the target and sparsity count
        them all (a weight no group holds only ever counts as staying)."""
        named = dict(self.module.named_parameters())
        return {name: named[name] for name in self.prunable if name in named}

    @property
    def initial_units(self) -> float:
        if self.budget == Budget.FLOPS and self.initial_macs is not None:
            return self.initial_macs
        return self.initial_weights

    def units(self, weights: Mapping[str, Tensor]) -> float:
        if self.budget == Budget.FLOPS and self.entry_macs is not None:
            return structured.budget_units(weights, self.entry_macs)
        return super().units(weights)

    def sparsity_after(self, remaining: float, cut: int) -> float:
        return self.sparsity if self.budget == Budget.FLOPS else super().sparsity_after(remaining, cut)

    def _entry_costs(self) -> dict[str, float] | None:
        return self.entry_macs if self.budget == Budget.FLOPS else None

    def resolution(self) -> float:
        """The cheapest cut still possible as a share of the budget; 1.0 when nothing more can go."""
        cheapest = structured.cheapest_cut(self.groups()[0], self.prunable_now(), self.masks.pruned,
                                           self.min_layer_density, self._entry_costs())  # fmt: skip
        return min(cheapest / max(self.initial_units, 1), 1.0)

    # -- per decision ---------------------------------------------------------------------------------------------

    def select(self, count: float) -> dict[str, Tensor]:
        """Channels holding about ``count`` units of the budget (:func:`~lightning_prune.structured.select`)."""
        groups, _ = self.groups()
        return structured.select(groups, self.masks.weights, self.saliency.scores(), self.prunable_now(),
                                 budget=count, min_layer_density=self.min_layer_density, pruned=self.masks.pruned,
                                 normalize_per_layer=self.normalize_per_layer,
                                 entry_costs=self._entry_costs(), per_cost=self.budget == Budget.WEIGHTS)  # fmt: skip

    def prune(
        self, trainer: "L.Trainer", ratio: float, remaining: float | None = None, target: float | None = None
    ) -> int:
        removed = super().prune(trainer, ratio, remaining, target)
        self._refresh_norms()
        return removed

    def undo(self) -> int:
        restored = super().undo()
        self._refresh_norms()
        return restored

    def rewind(self, trainer: "L.Trainer", snapshot: dict[str, Any]) -> int:
        restored = super().rewind(trainer, snapshot)
        self._refresh_norms()
        return restored

    def before_decision(self, trainer: "L.Trainer") -> None:
        if self.shrink_when == ShrinkWhen.DURING:
            # the previous cut survived its interval: now it can go for real
            self.shrink(trainer)

    def finish(self, trainer: "L.Trainer") -> None:
        if self.shrink_when == ShrinkWhen.DURING:
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
        # "counted": which weights initial_weights (and initial_macs) count; checkpoints without it counted only the
        # weights of pruned groups, those listed under "prunable"
        state = {**super().state_dict(), "prunable": list(self.prunable), "counted": "all_prunable"}
        state["budget"] = self.budget.value
        return {**state, **({"initial_macs": self.initial_macs} if self.initial_macs is not None else {})}

    def _check_budget(self, state: Mapping[str, Any]) -> None:
        """A run resumes with the budget it pruned by: its history and ratio count that budget's units, and a FLOPs
        budget needs the MACs of the model before any cut, which a model pruned by weights no longer has."""
        # checkpoints older than the "budget" key: only a FLOPs budget saved initial_macs
        saved = state.get("budget", Budget.FLOPS.value if "initial_macs" in state else Budget.WEIGHTS.value)
        if saved != self.budget.value:
            raise ValueError(
                f"RealTimePruningCallback: the checkpoint was pruned with budget={saved!r}, but this callback has "
                f"`budget`={self.budget.value!r}. Resume with budget={saved!r}, or start a new fit to prune by "
                f"{self.budget.value!r}."
            )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # the model may have been resized from the checkpoint since setup(): hold its current parameters
        if "masks" not in state:
            return super().load_state_dict(state)
        self._check_budget(state)
        self._build_state()
        super().load_state_dict(structured.fit_saved_state(state, self.masks.pruned, self.saliency.weights))
        self.initial_macs = state.get("initial_macs", self.initial_macs)
        if "prunable" in state and state.get("counted") != "all_prunable":
            self._count_all_prunable(list(state["prunable"]))
        self._refresh_norms()

    def _count_all_prunable(self, counted: list[str]) -> None:
        """A checkpoint whose counts held only the weights of pruned groups (``counted``): add the other prunable
        weights (they never shrink, so their size now is their size then), so that it resumes counting every one."""
        named = dict(self.module.named_parameters())
        counted_set = set(counted)
        self.initial_weights += sum(named[n].numel() for n in self.prunable if n not in counted_set and n in named)
        if self.initial_macs is not None:
            self._narrow_macs = counted
            self._widen_macs(named)
