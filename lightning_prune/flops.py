"""MACs of a network: ptflops' dense count per sample and per counted module, and the effective count of sparse
weights (each layer's MACs times its density), measured once per model shape (``FlopsMeter``).

FLOPs come from ptflops' default ("pytorch") backend, which counts ``nn.LSTM`` (the "aten" backend does not). Two
ptflops habits are handled here: it returns ``(None, None)`` instead of raising on a bad input (we raise), and it leaves
bound methods and counters on the model it analyses, which break ``torch.save`` of that object (we only ever give it a
deep copy). Its stock RNN hook also fails on a ``PackedSequence`` input, which users' recurrent models often pass, so
RNN layers get a hook that understands packed input. And it counts activation and pooling modules twice (once by the
module hook, once by its patch of the ``F.*`` function the module calls); the second count is dropped.
"""

import contextlib
import copy
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import ptflops
import torch
from ptflops.pytorch_ops import MODULES_MAPPING
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence

from lightning_prune.layers import NORM_LAYERS

_Hook = Callable[[nn.Module, tuple, Any], None]


class _Call(nn.Module):
    """Calls the wrapped model with positional inputs that ptflops hands over as one keyword argument.

    ptflops calls ``model(batch)`` or ``model(**batch)``; the keyword form keeps a tuple of inputs intact, and with no
    positional input ptflops' batch counter takes the batch size as 1, which is what we feed.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: tuple[Tensor, ...]) -> Any:
        return self.model(*inputs)


@dataclass(frozen=True)
class MacCount:
    """ptflops' dense MACs for one sample, and the MACs of each module it counted (by module name).

    The modules are those ptflops itself sums: a supported module, none of whose ancestors is supported (in practice
    the leaf layers), so nothing is counted twice; ``total`` is their sum plus the functional calls made outside them.
    """

    total: int
    per_layer: dict[str, int]

    def effective(self, model: nn.Module) -> float:
        """MACs discounting zeroed weights: each counted layer's MACs times the density of its weight(s) in ``model``
        now (which must have the shapes it was counted with). Functional calls carry no weight and count dense.
        No forward pass: what the callback logs as ``pruning/flops`` every interval."""
        outside = float(self.total - sum(self.per_layer.values()))
        return outside + sum(macs * _weight_density(model.get_submodule(n)) for n, macs in self.per_layer.items())

    def per_weight(self, model: nn.Module) -> dict[str, float]:
        """MACs per sample that each entry of a counted layer's weight(s) stands for, by parameter name: the layer's
        MACs spread evenly over its weights' entries (a convolution's output positions, a linear layer's tokens, a
        recurrent layer's time steps; an attention layer's score products are spread over its projections too).
        What removing one weight saves: ``budget="flops"`` ranks and counts channels with it.

        Example:
            >>> model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
            >>> count_macs(model, (torch.randn(1, 1, 4, 4),)).per_weight(model)  # 16 positions, 1 token (+ biases)
            {'0.weight': 17.77777777777778, '2.weight': 1.03125}
        """
        costs = {}
        for layer, macs in self.per_layer.items():
            named = list(_named_weights(model.get_submodule(layer), layer))
            entries = sum(w.numel() for _, w in named if isinstance(w, Tensor))
            costs.update({name: macs / entries for name, w in named if isinstance(w, Tensor) and entries})
        return costs


def count_macs(model: nn.Module, inputs: tuple[Tensor, ...]) -> MacCount:
    """Count ``model``'s MACs on the first sample of ``inputs`` with ptflops, on a deep copy of the model.

    Raises:
        RuntimeError: ptflops could not run the model on these inputs.
    """
    twin = copy.deepcopy(model)  # ptflops leaves methods on the model it counts; never hand it the caller's
    sample = tuple(t[:1] for t in inputs)
    counter = _ModuleCounter()
    kinds = {type(m) for m in twin.modules()} & MODULES_MAPPING.keys()
    for module in twin.modules():
        if type(module) in kinds:
            module.register_forward_pre_hook(counter.enter)
    captured = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        macs, _ = ptflops.get_model_complexity_info(
            _Call(twin),
            tuple(sample[0].shape),  # only handed to input_constructor
            input_constructor=lambda _: {"inputs": sample},
            print_per_layer_stat=False,
            as_strings=False,
            verbose=False,
            custom_modules_hooks={kind: counter.wrap(_hook_for(kind)) for kind in kinds},
        )
    if macs is None:
        lines = [line for line in captured.getvalue().splitlines() if line.strip()]
        cause = lines[-1] if lines else "no message"
        raise RuntimeError(
            f"ptflops could not count the FLOPs of {type(model).__name__} on one sample of the inputs with shapes "
            f"{shapes_of(inputs)} ({cause}). Check that `model(*example_input)` runs."
        )
    return MacCount(int(macs), {name: int(counter.flops.get(module, 0)) for name, module in _counted_units(twin)})


class FlopsMeter:
    """Effective MACs of a training model, cheaply and never fatally: what the callback logs as ``pruning/flops``.

    ptflops runs once per model shape (again only after a physical shrink); every other reading discounts those
    counts by the weights' densities, with no forward pass. The model is called as the first of ``targets`` (the
    model itself, "", or a submodule, for a LightningModule without ``forward``) and ``candidates`` that runs. When
    none runs, the reading is skipped (None) with one warning, and not tried again: logging never stops training.
    """

    def __init__(self) -> None:
        self.count: MacCount | None = None
        self.inputs: Tensor | tuple[Tensor, ...] | None = None  # the candidate the model ran on
        self.target = ""  # and the submodule it ran through
        self._shapes: list[tuple[str, tuple[int, ...]]] = []
        self.unavailable: str | None = None

    def measure(
        self, model: nn.Module, candidates: list[Tensor | tuple[Tensor, ...]], targets: Sequence[str] = ("",)
    ) -> float | None:
        if self.unavailable is not None:
            return None
        shapes = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
        if self.count is None or shapes != self._shapes:
            self.count = self._count(model, candidates, targets)
            self._shapes = shapes
        return None if self.count is None else self.count.effective(model.get_submodule(self.target))

    def _count(
        self, model: nn.Module, candidates: list[Tensor | tuple[Tensor, ...]], targets: Sequence[str]
    ) -> MacCount | None:
        errors = []
        for target in [self.target] if self.inputs is not None else targets:
            for inputs in candidates:
                try:
                    count = count_macs(model.get_submodule(target), as_input_tuple(inputs))
                    if count.total > 0:  # a forward that computes nothing countable is not the model's
                        self.inputs, self.target = inputs, target
                        return count
                    errors.append(f"{target or 'the model'} computed nothing on {shapes_of(as_input_tuple(inputs))}")
                except Exception as err:  # any failure of the user's forward: FLOPs are a read-out, not a requirement
                    errors.append(f"{type(err).__name__}: {err}")
        self.unavailable = "; ".join(errors) or "no example input (set `example_input_array` on the module)"
        warnings.warn(
            f"FLOPs are not logged (`pruning/flops`): the model could not be run on an example input "
            f"({self.unavailable}). Set `example_input_array` on your LightningModule to a batch its forward takes.",
            stacklevel=2,
        )
        return None


class _ModuleCounter:
    """Keeps ptflops' per-module counts, and keeps it from counting a module's operations twice.

    ptflops deletes its per-module counters before returning, so each module's running count is recorded as it goes.
    While counting, ptflops also patches functional ops (``F.relu``, ``F.max_pool2d``, ``torch.matmul``, ...) and adds
    their FLOPs to shared lists; ``nn.ReLU``, ``nn.MaxPool2d`` and the like call those ops, so their work would be
    counted by the module hook and again by the functional patch (ptflops 0.7.5 reports 32 for ``nn.ReLU`` on 16
    elements). The functional FLOPs appended while a counted module runs are dropped; those outside (``F.relu`` in a
    ``forward``) stay.
    """

    def __init__(self) -> None:
        self.flops: dict[nn.Module, int] = {}
        self._marks: dict[nn.Module, list[list[tuple[list, int]]]] = {}

    def enter(self, module: nn.Module, inputs: tuple) -> None:
        marks = [(collector, len(collector)) for collector in _functional_collectors()]
        self._marks.setdefault(module, []).append(marks)

    def wrap(self, hook: _Hook) -> _Hook:
        def hook_counting(module: nn.Module, inputs: tuple, output: Any) -> None:
            hook(module, inputs, output)
            self.flops[module] = module.__flops__
            for collector, length in self._marks[module].pop():
                del collector[length:]

        return hook_counting


def _functional_collectors() -> list[list]:
    # each patched op is a ptflops `torch_function_wrapper` holding its list; F.relu's is shared by all functional
    # ops, torch.matmul's by all tensor ops. Outside a ptflops run they are plain functions, with nothing to drop.
    ops = (F.relu, torch.matmul)
    return [op.collector for op in ops if isinstance(getattr(op, "collector", None), list)]


def _hook_for(kind: type) -> _Hook:
    hook = MODULES_MAPPING[kind]
    return _packed_aware(hook) if issubclass(kind, nn.RNNBase) else hook


def _packed_aware(hook: _Hook) -> _Hook:
    """ptflops' RNN hook reads ``input.shape``, which a ``PackedSequence`` lacks.

    The hook multiplies the per-step cost by ``shape[0] * shape[1]`` (batch times steps); a packed input runs exactly
    ``data.shape[0]`` steps over all sequences, so a ``(steps, 1)`` view stands in for it.
    """

    def hook_packed(module: nn.Module, inputs: tuple, output: Any) -> None:
        if inputs and isinstance(inputs[0], PackedSequence):
            inputs = (inputs[0].data[:, :1], *inputs[1:])
        hook(module, inputs, output)

    return hook_packed


def _counted_units(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    # mirrors ptflops' own accumulation: stop at the first supported module on each path
    if type(module) in MODULES_MAPPING:
        yield prefix, module
        return
    for name, child in module.named_children():
        yield from _counted_units(child, f"{prefix}.{name}" if prefix else name)


def _weight_density(module: nn.Module) -> float:
    """Fraction of non-zero entries over the weight(s) whose products the module's MACs count; 1.0 if none."""
    weights = [w for w in _weights(module) if isinstance(w, Tensor)]
    total = sum(w.numel() for w in weights)
    if total == 0:
        return 1.0
    return sum(int(torch.count_nonzero(w.detach())) for w in weights) / total


def _weights(module: nn.Module) -> Iterator[Any]:
    return (weight for _, weight in _named_weights(module))


def _named_weights(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(module, NORM_LAYERS):
        return
    for path, owner in module.named_modules(prefix=prefix):
        for name in owner._parameters:
            # torch.nn.utils.prune keeps `weight_orig` as the parameter and the masked `weight` as an attribute
            name = name.removesuffix("_orig")
            if isinstance(owner, (nn.RNNBase, nn.RNNCellBase)):
                keep = name.startswith(("weight_ih", "weight_hh"))
            else:
                keep = name.endswith("weight")
            if keep:
                yield f"{path}.{name}" if path else name, getattr(owner, name)


def as_input_tuple(example_input: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    inputs = (example_input,) if isinstance(example_input, Tensor) else example_input
    if not isinstance(inputs, tuple) or not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError(
            f"`example_input` must be a tensor or a non-empty tuple of tensors, got {type(example_input).__name__}."
        )
    for tensor in inputs:
        # the per-sample FLOPs need a first sample to slice
        if tensor.dim() == 0 or tensor.shape[0] == 0:
            raise ValueError(
                f"`example_input` tensors need a non-empty batch dimension, got shape {shapes_of(inputs)}."
            )
    return inputs


def shapes_of(inputs: tuple[Tensor, ...]) -> str:
    return ", ".join(str(tuple(t.shape)) for t in inputs)
