"""Layers of model libraries that torch-pruning does not know, told by class name (no model library is imported):
Hugging Face's ``Conv1D`` (GPT-2: a Linear with a transposed weight) and RMS norms (Llama, Mistral, Qwen).

torch-pruning traces an unknown layer as the operations inside it: a ``Conv1D`` becomes a matrix product whose
weight it cannot slice, so GPT-2's channels could not be followed, and an RMS norm's scale becomes a loose parameter
while its statistics over every channel go unseen. Here each gets a torch-pruning pruner that only tells its widths
(we never let torch-pruning cut: the groups are only read), so the graph follows the channels through it, and a
group handler that says which slices it owns: a ``Conv1D``'s columns (outputs) or rows (inputs), as a Linear's rows or
columns; an RMS norm's scale, with the norm marked as cross-channel, so that masked channels leave its statistics
(``norms.py``).
"""

from collections.abc import Callable
from typing import Any

import torch_pruning as tp
from torch import Tensor, nn

from lightning_prune.layers import is_transposed_linear


def is_rms_norm(module: nn.Module) -> bool:
    """A Hugging Face RMS norm (``*RMSNorm`` with one scale per channel and a ``variance_epsilon``): ``weight * x /
    rms(x)``. (A norm that scales by ``1 + weight``, Gemma's, is one too by name: the check by doing leaves out its
    groups, since its masked channels are not zero.)"""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__.endswith("RMSNorm")
        and isinstance(weight, Tensor)
        and weight.dim() == 1
        and hasattr(module, "variance_epsilon")
    )


def rms_epsilon(module: nn.Module) -> float:
    return float(module.variance_epsilon)


class _WidthsOnly(tp.pruner.function.BasePruningFunc):
    """A layer torch-pruning may trace through but never cut (our groups are read from its graph, never pruned)."""

    def prune_out_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
        raise NotImplementedError("lightning_prune reads torch-pruning's groups; it removes channels itself")

    def prune_in_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
        raise NotImplementedError("lightning_prune reads torch-pruning's groups; it removes channels itself")


class TransposedLinearWidths(_WidthsOnly):
    """A ``Conv1D``: ``weight`` is ``(in, out)``."""

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[1]

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[0]


class ChannelwiseWidths(_WidthsOnly):
    """An RMS norm: as many channels in as out, each going with the same one (the intra-layer coupling)."""

    def prune_out_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
        raise NotImplementedError("lightning_prune reads torch-pruning's groups; it removes channels itself")

    prune_in_channels = prune_out_channels  # the same function: torch-pruning couples the inputs with the outputs

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[0]

    get_in_channels = get_out_channels


def customized_pruners(model: nn.Module) -> dict[type, tp.pruner.function.BasePruningFunc]:
    """torch-pruning pruners for the layer types of ``model`` it does not know."""
    pruners: dict[type, tp.pruner.function.BasePruningFunc] = {}
    for module in model.modules():
        if is_transposed_linear(module):
            pruners.setdefault(type(module), TransposedLinearWidths())
        elif is_rms_norm(module):
            pruners.setdefault(type(module), ChannelwiseWidths())
    return pruners


def rms_norm(b: Any, norm: nn.Module, positions: Tensor, channels: Tensor, out: bool) -> None:
    """An RMS norm's scale goes with the channel, and its statistics span the channels (a cross-channel norm)."""
    b.cross_channel_norm(norm, positions, channels)


def foreign_handler(module: nn.Module) -> Callable | None:
    """The group handler of a layer torch-pruning does not know, None for any other (a ``Conv1D`` is a Linear to the
    handlers: ``tracing._linear`` reads which of its weight's dimensions are its outputs)."""
    return rms_norm if is_rms_norm(module) else None
