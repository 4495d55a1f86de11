"""Compact export: a dense copy of a model without the channels that compute exactly zero."""

import copy
from collections.abc import Sequence

from torch import nn

from lightning_prune.inputs import Inputs
from lightning_prune.layers import classifier_name
from lightning_prune.structured.find import default_roots, find_groups
from lightning_prune.structured.shrink import removable, remove_channels


def compact_copy(model: nn.Module, example_input: Inputs | None, roots: Sequence[str] | None = None) -> nn.Module:
    """A dense copy of ``model`` without the channels that compute exactly zero (the original is untouched).

    A channel goes when every slice that produces it is zero: its weights' rows, its bias, its batch-norm scale and
    shift. Such a channel outputs zero, so removing it changes no output.
    """
    compact = copy.deepcopy(model)
    if roots is None:
        roots = default_roots(compact)
    groups, graph = find_groups(compact, example_input, roots, classifier_name(compact))
    zero = {name: (p == 0) for name, p in compact.named_parameters()}
    remove = removable(groups, zero)
    if remove:
        remove_channels(compact, groups, remove, graph)
    return compact
