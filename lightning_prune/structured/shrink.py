"""Physical removal of masked channels: the model, and each training step, get smaller.

A channel is removable when every slice that produces it is masked (so it outputs exactly zero): removing it then
changes nothing the network computes, only its size. Conv / Linear / BatchNorm channels are removed by
torch-pruning through the traced graph; recurrent hidden units by ``rnn.py``.
"""

from collections.abc import Mapping, Sequence

import torch
import torch_pruning as tp
from torch import Tensor, nn

from lightning_prune.optim import Slices
from lightning_prune.structured.groups import ChannelGroup, parameter_names
from lightning_prune.structured.rnn import shrink_rnn
from lightning_prune.structured.selection import removed_channels


def removable(groups: Sequence[ChannelGroup], pruned: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Per group name, the channels whose producing slices are all masked (a group keeps at least one channel)."""
    remove = {}
    for group in groups:
        gone = removed_channels(group, pruned)
        if gone.all():
            gone[0] = False
        if gone.any():
            remove[group.name] = gone.nonzero().squeeze(1)
    return remove


def remove_channels(
    model: nn.Module, groups: Sequence[ChannelGroup], remove: Mapping[str, Tensor], graph: "tp.DependencyGraph | None"
) -> Slices:
    """Physically remove channels. Returns, per changed parameter (by its name before removal), the kept positions
    along each sliced dimension, to slice optimizer state and other per-weight buffers the same way."""
    by_name = {g.name: g for g in groups}
    names = parameter_names(model)
    modules = dict(model.named_modules())
    slices: dict[str, list[tuple[int, Tensor]]] = {}
    rnn_plan: dict[str, dict[int, Tensor]] = {}
    for name, channels in remove.items():
        group = by_name[name]
        if channels.numel() == 0:
            continue
        if group.root is None:
            rnn_plan.setdefault(group.module, {})[group.layer] = channels
            continue
        for member in group.members:
            kept = (~torch.isin(member.channel, channels)).nonzero().squeeze(1)
            slices.setdefault(member.param, []).append((member.dim, kept))
        pruner = graph.get_pruner_of_module(group.root)
        graph.get_pruning_group(group.root, pruner.prune_out_channels, channels.tolist()).prune(record_history=False)
    for rnn_name, per_layer in rnn_plan.items():
        for param, dims in shrink_rnn(model, modules[rnn_name], per_layer, names).items():
            slices.setdefault(param, []).extend(dims)
    # parameters dropped and recreated keep their names: the slices are keyed by name
    return {name: _merge(dims) for name, dims in slices.items()}


def _merge(dims: list[tuple[int, Tensor]]) -> list[tuple[int, Tensor]]:
    """Several groups may slice one parameter along the same dim (never the same positions): intersect them."""
    merged: dict[int, Tensor] = {}
    for dim, kept in dims:
        merged[dim] = kept if dim not in merged else merged[dim][torch.isin(merged[dim], kept)]
    return sorted(merged.items())
