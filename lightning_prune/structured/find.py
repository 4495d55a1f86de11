"""All channel groups of a model: recurrent hidden units and named attention heads (ours), and traced conv / linear /
attention channels (torch-pruning), with the groups that cannot be pruned and why."""

from collections.abc import Sequence

from torch import nn

from lightning_prune.inputs import Inputs, within
from lightning_prune.layers import ATTENTION_LAYERS, default_prunable, is_channel_layer, owner_names
from lightning_prune.structured.attention import head_groups, head_layers, head_layouts
from lightning_prune.structured.groups import ChannelGroup, SkippedGroup, parameter_names
from lightning_prune.structured.rnn import rnn_groups
from lightning_prune.structured.tracing import is_candidate_among, layer_groups, trace


def _traced(module: nn.Module | None) -> bool:
    """Whether torch-pruning's graph finds this layer's groups (recurrent layers have ours)."""
    return module is not None and (is_channel_layer(module) or isinstance(module, ATTENTION_LAYERS))


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

    Recurrent layers and attention heads told by their projections' names (``attention.py``) get their own groups;
    every other layer goes through torch-pruning's DependencyGraph, traced by calling ``target`` (a module's name, ""
    for the model) on ``example_input``. The classifier's output channels (the classes) are never a group. Only the
    layers the traced forward reaches can be pruned.

    Raises:
        ValueError: Conv / linear / attention roots but no example input to trace.
    """
    modules = dict(model.named_modules())
    names = parameter_names(model)
    reached = [r for r in roots if within(target, r)]
    groups, skipped = rnn_groups(model, reached, names, excluded)
    candidate = is_candidate_among(reached, excluded)
    layouts = [layout for layout in head_layouts(model) if within(target, layout.name)]
    heads, heads_skipped = head_groups(model, layouts, names)
    groups += [g for g in heads if candidate([m.param for m in g.members if m.produces and m.param.endswith("weight")])]
    skipped += [s for s in heads_skipped if any(owner in reached for owner in s.modules)]
    skipped += [SkippedGroup(r, [r], f"the forward pass traced ({target!r}) does not reach it") for r in roots
                if r not in reached and _traced(modules.get(r))]  # fmt: skip
    if not any(_traced(modules.get(r)) for r in reached):
        return groups, skipped
    if example_input is None:
        raise ValueError("structured pruning of convolutional / linear layers needs an example input to trace")
    traced = trace(model, example_input, target)
    traced_groups, traced_skipped = layer_groups(model, traced, candidate, classifier, sorted(head_layers(layouts)))
    return groups + traced_groups, skipped + traced_skipped
