"""The common part of both pruners: prunable weights, sparsity, per-step upkeep, cut sizes, read-outs and state.

Also the settings' types (mode, budget, when to shrink) and the strategies refused: those that shard the parameters.
The unstructured path needs neither ``structured/`` nor torch-pruning: they are imported only by structured mode and
by :meth:`Pruner.export`.
"""

import copy
import math
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_prune.flops import FlopsMeter
from lightning_prune.importance import IMPORTANCE_METHODS, Saliency
from lightning_prune.inputs import Inputs, forward_targets, to_device_of
from lightning_prune.layers import classifier_name, count_nonzero, owner_names, prunable_weights
from lightning_prune.layers import sparsity as sparsity_of
from lightning_prune.masks import PruningMasks
from lightning_prune.optim import per_weight_state
from lightning_prune.profiling import profile
from lightning_prune.validation import Choice, check_bool, check_choice, check_int, check_number, check_patterns

if TYPE_CHECKING:
    import lightning as L


class Mode(Choice):
    """What a cut removes: single weights, or whole channels and hidden units."""

    UNSTRUCTURED = "unstructured"
    STRUCTURED = "structured"


class Budget(Choice):
    """What a ratio, a cut and the target count: prunable weights, or (structured) the MACs per sample they stand
    for."""

    WEIGHTS = "weights"
    FLOPS = "flops"


class ShrinkWhen(Choice):
    """Structured mode: when cut channels are removed for real (at the next decision, or by the export)."""

    DURING = "during"
    END = "end"


SHRINK_WHEN = tuple(member.value for member in ShrinkWhen)
# strategies that shard parameters across devices: no rank holds a whole weight to rank, mask and re-mask
SHARDING_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def refuse_sharded_parameters(strategy: object) -> None:
    """Masks and saliency are kept per whole weight tensor, identical on every rank (DDP): a strategy that shards the
    parameters is refused before anything runs, with what works instead.

    Raises:
        ValueError: ``strategy`` is FSDP, DeepSpeed or ModelParallel (or a subclass).
    """
    sharding = [c.__name__ for c in type(strategy).__mro__ if c.__name__ in SHARDING_STRATEGIES]
    if sharding:
        raise ValueError(
            f"RealTimePruningCallback does not support {sharding[0]}: it shards the parameters, and pruning ranks, "
            "masks and re-masks whole weight tensors on every rank. It works on one device and with DDP "
            "(strategy='ddp', 'ddp_spawn', 'ddp_notebook', several GPUs or nodes); under DDP every rank holds "
            "the same masks. For a model that only fits sharded, prune it with DDP at a smaller scale first."
        )


class Pruner:
    """The common part: which weights are prunable, sparsity against their initial count, the per-step upkeep of
    masks and saliency, and how many weights a ratio cuts.

    Args:
        importance: The saliency method (``importance.py``).
        saliency_beta: Per-step smoothing of the running saliency.
        saliency_every: Steps between saliency updates near a decision.
        min_layer_density: No prunable tensor (or channel group) keeps less than this share.
        normalize_per_layer: Rank saliency normalised per layer (or group) rather than raw.
        parameters: Glob patterns replacing the default prunable weights.
        exclude: Glob patterns of weights never to prune.

    Raises:
        ValueError: A setting outside its range, named with the range (a wrong type is also a TypeError).
    """

    mode = Mode.UNSTRUCTURED

    def __init__(
        self,
        importance: str = "taylor",
        saliency_beta: float = 0.99,
        saliency_every: int = 16,
        min_layer_density: float = 0.02,
        normalize_per_layer: bool = True,
        parameters: list[str] | None = None,
        exclude: list[str] | None = None,
    ) -> None:
        self.importance = check_choice("importance", importance, IMPORTANCE_METHODS)
        self.saliency_beta = check_number("saliency_beta", saliency_beta, 0, 1, high_open=True)
        self.saliency_every = check_int("saliency_every", saliency_every, 1)
        self.min_layer_density = check_number("min_layer_density", min_layer_density, 0, 1)
        self.normalize_per_layer = check_bool("normalize_per_layer", normalize_per_layer)
        self.parameters = check_patterns("parameters", parameters)
        self.exclude = check_patterns("exclude", exclude)
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
        refuse_sharded_parameters(trainer.strategy)
        weights = prunable_weights(module, self.parameters, self.exclude)
        self.prunable = list(weights)
        self.initial_weights = sum(w.numel() for w in weights.values())
        self.module = module
        self._build_state()

    def _build_state(self) -> None:
        raise NotImplementedError

    def prepare(self, candidates: list[Inputs], target: float | None = None) -> None:
        """Before the first training step: what the model may be called with (``inputs.candidate_inputs``), for
        tracing, FLOPs and export. Structured mode checks the model here, and says how much of ``target`` it can
        reach."""
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

    # -- the budget: what a ratio, a cut and the target count (weights here; MACs in structured budget="flops") ----

    @property
    def initial_units(self) -> float:
        """The budget before pruning: the prunable weights' number."""
        return self.initial_weights

    def units(self, weights: Mapping[str, Tensor]) -> float:
        """What the non-zero entries of ``weights`` (prunable weights, or slices of them) count for in the budget."""
        return count_nonzero(weights)

    def remaining(self) -> float:
        """The budget's units not cut yet: prunable weights not zero now."""
        return self.units(self.prunable_now()) if self.masks is not None else self.initial_units

    def sparsity_at(self, remaining: float) -> float:
        """The budget's sparsity with ``remaining`` units left: what the controller paces and the target reaches."""
        return sparsity_of(remaining, self.initial_units)

    def sparsity_after(self, remaining: float, cut: int) -> float:
        """The weights' sparsity (what is logged) after ``cut`` weights went from ``remaining`` units of the budget:
        no second count while the budget counts weights."""
        return self.sparsity_at(remaining - cut)

    @property
    def sparsity(self) -> float:
        """Fraction of the prunable weights that are zero now, or removed, against their number before pruning."""
        if self.masks is None:
            return 0.0
        return sparsity_of(count_nonzero(self.prunable_now()), self.initial_weights)

    @torch.no_grad()
    def readouts(self, per_layer: bool = False, sparsity: float | None = None) -> dict[str, float]:
        """What the model looks like now, for the logs: its parameters (all, and non-zero), its effective MACs per
        sample (when a forward pass on an example input works) and, with ``per_layer``, each prunable weight's
        sparsity. ``sparsity``, when known, spares counting the prunable weights again."""
        prunable = set(self.prunable)
        named = dict(self.module.named_parameters())
        if sparsity is None:
            sparsity = self.sparsity
        nonzero = round((1 - sparsity) * self.initial_weights)
        nonzero += sum(int(p.count_nonzero()) for n, p in named.items() if n not in prunable)
        values = {
            "pruning/params_nonzero": float(nonzero),
            "pruning/params_total": float(sum(p.numel() for p in named.values())),
        }
        candidates = [self.example_input, *self.candidates] if self.example_input is not None else self.candidates
        on_device = [to_device_of(self.module, c) for c in candidates]
        flops = self.flops.measure(self.module, on_device, self.forward_targets())
        if flops is not None:
            values["pruning/flops"] = flops
        if per_layer:
            for name, weight in self.prunable_now().items():
                values[f"pruning/layer/{name}"] = 1 - float(weight.count_nonzero()) / weight.numel()
        return values

    def forward_targets(self) -> list[str]:
        """Where the model may be called, most likely first: itself, then the submodules holding the prunable layers
        (a LightningModule without ``forward`` calls one of them in its ``training_step``)."""
        return forward_targets(self.module, owner_names(self.prunable))

    def resolution(self) -> float:
        """The smallest possible change of sparsity."""
        return 1 / max(self.initial_weights, 1)

    # -- per step ---------------------------------------------------------------------------------------------------

    def score(self, fold_in: bool) -> None:
        """The step's gradients are final: fold them into the saliency, or let the next update stand for them."""
        if fold_in:
            self.saliency.update()
        else:
            self.saliency.skip()

    def after_step(self) -> None:
        """Whatever the optimizer did, cut weights are zero again before the next forward."""
        self.masks.apply()

    # -- per decision -----------------------------------------------------------------------------------------------

    def before_decision(self, trainer: "L.Trainer") -> None:
        """Whatever must happen at every decision before the cut (structured: remove what survived probation)."""

    def cut_count(self, ratio: float, remaining: float | None = None, target: float | None = None) -> int:
        """Whole units (weights) for a cut of ``ratio`` of the ``remaining`` ones (counted when not given). The
        controller never asks past ``target``; in whole units, the cut that reaches it reaches it (ceil), by less than
        one unit over."""
        total = self.initial_units
        remaining = self.units(self.prunable_now()) if remaining is None else remaining
        count = round(ratio * remaining)
        if target is not None:
            needed = math.ceil(target * total - 1e-9) - (total - remaining)
            count = needed if ratio * remaining >= needed - 1 else min(count, needed)
        return max(count, 0)

    def prune(
        self, trainer: "L.Trainer", ratio: float, remaining: float | None = None, target: float | None = None
    ) -> int:
        """Cut ``ratio`` of the ``remaining`` units of the budget (counted when not given), never past ``target``;
        return how many prunable weights went."""
        prunable = self.prunable_now()
        remaining = self.units(prunable) if remaining is None else remaining
        selection = self.select(self.cut_count(ratio, remaining, target))
        # under DDP every rank must hold rank 0's masks, bit for bit
        selection = trainer.strategy.broadcast(selection, src=0)
        # what goes: the prunable weights among the cut entries that were not zero already
        going = sum(int(prunable[n].view(-1)[i].count_nonzero()) for n, i in selection.items() if n in prunable)
        self.masks.cut(selection, trainer.optimizers)
        return going

    def select(self, count: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def undo(self) -> int:
        """Restore the last cut; return how many weights came back."""
        return self.masks.undo_last_cut()

    @torch.no_grad()
    def snapshot(self, trainer: "L.Trainer") -> dict[str, Any]:
        """The module (parameters and buffers), the optimizers' state and the masks now: what :meth:`rewind` returns
        to exactly, on the device the module is on."""
        return {"module": {k: v.detach().clone() for k, v in self.module.state_dict().items()},
                "optimizers": [copy.deepcopy(o.state_dict()) for o in trainer.optimizers],
                "masks": self.masks.state_dict()}  # fmt: skip

    @torch.no_grad()
    def rewind(self, trainer: "L.Trainer", snapshot: dict[str, Any]) -> int:
        """Back to a :meth:`snapshot`: every weight, buffer, optimizer moment and mask as it was then (the training
        since is undone too, so the model is the one that was judged then); return how many prunable weights came
        back."""
        before = count_nonzero(self.prunable_now())
        self.module.load_state_dict(snapshot["module"])
        for optimizer, state in zip(trainer.optimizers, snapshot["optimizers"], strict=True):
            optimizer.load_state_dict(state)
        self.masks.load_state_dict(snapshot["masks"])
        return count_nonzero(self.prunable_now()) - before

    def optimizer_state_restorer(self, trainer: "L.Trainer") -> Callable[[], None]:
        """Copy the optimizers' per-weight state (e.g. Adam's moments) of the prunable weights now; the function
        returned puts it back. Exact while no optimizer step runs in between, as for a trial cut undone at once (the
        cut zeroed its weights' moments; :meth:`undo` gives back only the weights)."""
        live = [value for _, value in per_weight_state(trainer.optimizers, self.masks.weights.values())]
        saved = [tensor.clone() for tensor in live]

        def restore() -> None:
            for tensor, kept in zip(live, saved, strict=True):
                tensor.copy_(kept)

        return restore

    def finish(self, trainer: "L.Trainer") -> None:
        """Training is over."""

    def final_model(self, module: nn.Module) -> nn.Module:
        """The model to profile at the end of fit: the part the inputs run through (the module, or for one without
        ``forward``, the submodule its ``training_step`` calls)."""
        return module.get_submodule(self.flops.target)

    def export(self, module: nn.Module) -> nn.Module:
        """A compact dense copy of ``module`` without the channels whose outputs are exactly zero, traced through the
        first forward target and candidate input that run (every group checked by doing, as structured mode does)."""
        from lightning_prune import structured  # torch-pruning: only when a compact copy is asked for

        candidates = [c for c in (self.flops.inputs, self.example_input, *self.candidates) if c is not None]
        declared = getattr(module, "example_input_array", None)
        candidates += [declared] if declared is not None else []
        roots = owner_names(self.prunable or prunable_weights(module, self.parameters, self.exclude))
        found = structured.plan(module, [to_device_of(module, c) for c in candidates], roots, classifier_name(module))
        if found.example is None:
            raise RuntimeError(f"export could not run the model on an example input: {'; '.join(found.tried)}")
        keep = {group.name for group in found.groups}
        return structured.compact_copy(module, found.example, roots, found.target, keep)

    # -- persistence ------------------------------------------------------------------------------------------------

    def final_profile(self, module: nn.Module) -> dict[str, float] | None:
        """``profile()`` of the final model (structured: its compact export) on the example input; None, with a
        warning, when the model cannot be run on it: a read-out never fails a finished fit."""
        example = self.flops.inputs if self.flops.inputs is not None else self.example_input
        if example is None or self.flops.unavailable is not None:  # said already, once
            return None
        final = self.final_model(module)
        try:
            # Lightning has moved the model back to the CPU by now; the example was captured on the training device
            return profile(final, to_device_of(final, example))
        except Exception as err:  # the user's forward on an example input: anything can go wrong, nothing must
            warnings.warn(f"RealTimePruningCallback could not profile the final model: {type(err).__name__}: {err}",
                          stacklevel=2)  # fmt: skip
            return None

    def state_dict(self) -> dict[str, Any]:
        state = {"initial_weights": self.initial_weights, "example_input": self.example_input}
        if self.masks is not None:
            state.update(masks=self.masks.state_dict(), saliency=self.saliency.state_dict())
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.initial_weights = state.get("initial_weights", self.initial_weights)
        if state.get("example_input") is not None:
            self.example_input = state["example_input"]
        if "masks" in state:
            self.masks.load_state_dict(state["masks"])
            self.saliency.load_state_dict(state["saliency"])
