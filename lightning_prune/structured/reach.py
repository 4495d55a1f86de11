"""How far structured pruning can go over all prunable weights when some groups are left out.

The target and ``sparsity`` count every prunable weight in both modes (``layers.prunable_weights``). A weight that
no pruned group holds a slice of never loses an entry, so the groups that are pruned are cut deeper to make up for
it, and a target beyond what they hold cannot be reached: said once, at setup, with the figures.
"""

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lightning_prune.structured.groups import ChannelGroup, SkippedGroup


def removable_entries(
    groups: Sequence[ChannelGroup], weights: Mapping[str, Tensor], entry_costs: Mapping[str, float] | None = None
) -> float:
    """How many entries of ``weights`` lie in a slice of some group (each counting its ``entry_costs``, e.g. MACs,
    when given): the most that pruning these groups can take."""
    covered = {name: torch.zeros(w.shape, dtype=torch.bool) for name, w in weights.items()}
    for group in groups:
        for member in group.members:
            if member.param in covered:
                covered[member.param].index_fill_(member.dim, member.index(), True)
    return sum(_cost(name, int(mask.sum()), entry_costs) for name, mask in covered.items())


def _cost(name: str, entries: int, entry_costs: Mapping[str, float] | None) -> float:
    return entries if entry_costs is None else entries * entry_costs.get(name, 0.0)


def reach_message(
    groups: Sequence[ChannelGroup],
    skipped: Sequence[SkippedGroup],
    weights: Mapping[str, Tensor],
    target: float | None,
    min_layer_density: float,
    entry_costs: Mapping[str, float] | None = None,
) -> str | None:
    """What the pruned groups can reach over all of ``weights`` (the prunable weights; with ``entry_costs``, the
    MACs they stand for), when some of those weights lie in no pruned group; None when every prunable weight can lose
    entries.

    The groups left out are named in their own warnings; this says what that costs the target: the pruned groups
    are cut deeper (each weight counts, wherever it is), and a target beyond what they hold stops short of it.
    """
    total = sum(_cost(name, w.numel(), entry_costs) for name, w in weights.items())
    held = removable_entries(groups, weights, entry_costs)
    if not total or held >= total:
        return None
    share = held / total
    # every group keeps at least min_layer_density of its channels (and one)
    reachable = share * (1 - min_layer_density)
    what = "prunable weights" if entry_costs is None else "MACs of the prunable weights"
    lines = [
        f"structured pruning can cut only {held:,.0f} of the {total:,.0f} {what} ({share:.1%}): the rest lie in "
        f"no pruned group ({len(skipped)} left out, named above, or kept whole by `exclude`) and count towards "
        "the target as weights that stay."
    ]
    if target is None:
        lines.append(f"Guard mode prunes the other groups as far as the guard allows (at most about {reachable:.4f}).")
    elif target <= reachable:
        deeper = target / share
        lines.append(
            f"To reach target_sparsity={target} over all {what} it cuts the pruned groups deeper, to about "
            f"{deeper:.1%} of what they hold."
        )
    else:
        lines.append(
            f"target_sparsity={target} cannot be reached: it prunes the other groups as far as min_layer_density="
            f"{min_layer_density} lets them (at most about {math.floor(reachable * 1e4) / 1e4:.4f} over all {what}). "
            "Lower the target, or make the groups above prunable (see each message)."
        )
    return " ".join(lines)
