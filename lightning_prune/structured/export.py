"""Compact export: a dense copy of a model without the channels that compute exactly zero."""

import warnings
from collections.abc import Collection, Sequence

from torch import nn

from lightning_prune.inputs import Inputs
from lightning_prune.layers import classifier_name
from lightning_prune.structured.find import default_roots, find_groups
from lightning_prune.structured.shrink import removable, remove_channels
from lightning_prune.structured.verify import model_copy, verify_groups


def compact_copy(
    model: nn.Module,
    example_input: Inputs | None,
    roots: Sequence[str] | None = None,
    target: str = "",
    keep: Collection[str] | None = None,
    excluded: Sequence[str] = (),
) -> nn.Module:
    """A dense copy of ``model`` without the channels that compute exactly zero (the original is untouched).

    A channel goes when every slice that produces it is zero (its weights' rows, its bias, its norm's scale and
    shift) and every LayerNorm / GroupNorm it passes ignores it (it was masked by the pruner or
    :func:`~lightning_prune.structured.mask_channels`). Such a channel changes nothing, so removing it changes no
    output.

    Args:
        model: The model (a LightningModule too).
        example_input: What ``target`` is called with, to trace the model.
        roots: Layers whose output channels may go (default: those of the default prunable weights).
        target: The submodule the forward runs through ("" the model itself).
        keep: The names of the groups known to be removable exactly (the pruner's); None: every group is checked
            by doing, and those left out are warned about.
        excluded: Parameters never to cut (their groups are kept whole).
    """
    compact = model_copy(model)
    if roots is None:
        roots = default_roots(compact)
    groups, skipped = find_groups(compact, example_input, roots, classifier_name(compact), target, excluded)
    if keep is not None:
        groups = [g for g in groups if g.name in keep]
    else:
        if example_input is not None:
            skipped += verify_groups(compact, target, example_input, groups)
        left_out = {s.name for s in skipped}
        groups = [g for g in groups if g.name not in left_out]
        for group in skipped:
            warnings.warn(group.message(), stacklevel=2)
    zero = {name: (p == 0) for name, p in compact.named_parameters()}
    remove = removable(compact, groups, zero)
    if remove:
        remove_channels(compact, groups, remove)
    return compact
