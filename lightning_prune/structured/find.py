"""All channel groups of a model: recurrent hidden units (ours) and traced conv / linear channels (torch-pruning)."""

from collections.abc import Sequence

import torch_pruning as tp
from torch import nn

from lightning_prune.inputs import Inputs
from lightning_prune.layers import RECURRENT_LAYERS, WEIGHTED_LAYERS, classifier_name
from lightning_prune.structured.groups import ChannelGroup, layer_groups, parameter_names, trace
from lightning_prune.structured.rnn import rnn_groups


def default_roots(model: nn.Module) -> list[str]:
    """Module names whose output channels may be pruned: Conv/Linear (but the classifier) and recurrent layers."""
    classifier = classifier_name(model)
    return [
        name
        for name, m in model.named_modules()
        if (isinstance(m, WEIGHTED_LAYERS) and name != classifier) or isinstance(m, RECURRENT_LAYERS)
    ]


def find_groups(
    model: nn.Module, example_input: Inputs | None, roots: Sequence[str], classifier: str | None = None
) -> tuple[list[ChannelGroup], "tp.DependencyGraph | None"]:
    """The channel groups of ``model`` whose root layer is one of ``roots`` (module names), and the traced graph
    (None when no conv / linear layer is a root).

    Recurrent layers get their own groups; every other layer goes through torch-pruning's DependencyGraph, traced on
    ``example_input``. The classifier's output channels (the classes) are never a group.

    Raises:
        ValueError: Conv / linear roots but no example input to trace.
    """
    groups = rnn_groups(model, roots, parameter_names(model))
    modules = dict(model.named_modules())
    if not any(isinstance(modules.get(r), WEIGHTED_LAYERS) for r in roots):
        return groups, None
    if example_input is None:
        raise ValueError("structured pruning of convolutional / linear layers needs an example input to trace")
    graph = trace(model, example_input)
    return groups + layer_groups(model, graph, roots, classifier), graph
