"""All channel groups of a model: recurrent hidden units (ours) and traced conv / linear / attention channels
(torch-pruning), with the groups that cannot be pruned and why."""

from collections.abc import Sequence

from torch import nn

from lightning_prune.inputs import Inputs, within
from lightning_prune.layers import ATTENTION_LAYERS, WEIGHTED_LAYERS, default_prunable, owner_names
from lightning_prune.structured.groups import ChannelGroup, SkippedGroup, parameter_names
from lightning_prune.structured.rnn import rnn_groups
from lightning_prune.structured.tracing import is_candidate_among, layer_groups, trace

TRACED_LAYERS = (*WEIGHTED_LAYERS, *ATTENTION_LAYERS)


def default_roots(model: nn.Module) -> list[str]:
    """Module names whose output channels may be pruned: the owners of the default prunable weights (Conv / Linear
    but the classifier, attention, recurrent layers)."""
    return owner_names(default_prunable(model))


def find_groups(
    model: nn.Module,
    example_input: Inputs | None,
    roots: Sequence[str],
    classifier: str | None = None,
    target: str = "",
    excluded: Sequence[str] = (),
) -> tuple[list[ChannelGroup], list[SkippedGroup]]:
    """The channel groups of ``model`` with a producing layer among ``roots`` (module names) and no producing
    parameter in ``excluded`` (parameter names), and those of them that cannot be pruned, with why.

    Recurrent layers get their own groups; every other layer goes through torch-pruning's DependencyGraph, traced by
    calling ``target`` (a module's name, "" for the model) on ``example_input``. The classifier's output channels
    (the classes) are never a group. Only the layers the traced forward reaches can be pruned.

    Raises:
        ValueError: Conv / linear / attention roots but no example input to trace.
    """
    modules = dict(model.named_modules())
    reached = [r for r in roots if within(target, r)]
    groups, skipped = rnn_groups(model, reached, parameter_names(model), excluded)
    skipped += [SkippedGroup(r, [r], f"the forward pass traced ({target!r}) does not reach it") for r in roots
                if r not in reached and isinstance(modules.get(r), TRACED_LAYERS)]  # fmt: skip
    if not any(isinstance(modules.get(r), TRACED_LAYERS) for r in reached):
        return groups, skipped
    if example_input is None:
        raise ValueError("structured pruning of convolutional / linear layers needs an example input to trace")
    traced = trace(model, example_input, target)
    traced_groups, traced_skipped = layer_groups(model, traced, is_candidate_among(reached, excluded), classifier)
    return groups + traced_groups, skipped + traced_skipped
