"""Choosing channels to cut: per-channel saliency and cost, and a budgeted greedy selection.

Public so that scripts can choose channels exactly as the callback does (``select``), e.g. to measure what removing a
given share of the weights buys.
"""

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from lightning_prune.structured.groups import ChannelGroup, Member


def _per_channel(group: ChannelGroup, per_position: Callable[[Member], Tensor | None]) -> Tensor:
    """Sum a per-position quantity of every member into the group's channels."""
    total = torch.zeros(group.size, dtype=torch.float64)
    for member in group.members:
        values = per_position(member)
        if values is not None:
            total.index_add_(0, member.channel, values.double().cpu())
    return total


def channel_scores(group: ChannelGroup, saliency: Mapping[str, Tensor]) -> Tensor:
    """A group's channel saliency: the sum of its members' saliency over each channel's slices."""

    def per_position(member: Member) -> Tensor | None:
        values = saliency.get(member.param)
        if values is None:
            return None
        return values.detach().abs().transpose(0, member.dim).reshape(values.shape[member.dim], -1).sum(1)

    return _per_channel(group, per_position)


def channel_cost(group: ChannelGroup, weights: Mapping[str, Tensor]) -> Tensor:
    """How many prunable-weight entries each channel of the group holds (what removing it saves)."""

    def per_position(member: Member) -> Tensor | None:
        weight = weights.get(member.param)
        if weight is None:
            return None
        return torch.full((weight.shape[member.dim],), float(weight.numel() // weight.shape[member.dim]))

    return _per_channel(group, per_position)


def removed_channels(group: ChannelGroup, pruned: Mapping[str, Tensor]) -> Tensor:
    """Boolean per channel: every producing slice of it is masked."""
    gone = torch.ones(group.size, dtype=torch.bool)
    any_producer = False
    for member in group.members:
        if not member.produces or member.param not in pruned:
            continue
        any_producer = True
        mask = pruned[member.param]
        per_position = mask.transpose(0, member.dim).reshape(mask.shape[member.dim], -1).all(1).cpu()
        channel_done = torch.ones(group.size, dtype=torch.int32)
        channel_done.scatter_reduce_(0, member.channel, per_position.int(), "amin")
        gone &= channel_done.bool()
    return gone if any_producer else torch.zeros(group.size, dtype=torch.bool)


def select_channels(
    groups: Sequence[ChannelGroup],
    scores: Sequence[Tensor],
    costs: Sequence[Tensor],
    gone: Sequence[Tensor],
    budget: float,
    min_layer_density: float,
    normalize_per_layer: bool = True,
) -> dict[str, Tensor]:
    """Channels to cut, cheapest first: the lowest saliency per weight saved (a greedy knapsack), until their
    weights fill ``budget``.

    Saliency is normalised per group (each group's mean is 1, unless ``normalize_per_layer`` is False) so layers of
    different scale compete fairly, and divided by the channel's share of weights: a channel that frees many weights
    for little saliency goes first, one that frees few (an input convolution's filter) is protected. Every group
    keeps at least ``max(1, ceil(min_layer_density * size))`` channels. Tied groups (the layers of one nn.LSTM, which
    share one hidden size) lose channels together, the r-th cheapest of each at once, so the removal really shrinks
    them.
    """
    mean_cost = float(torch.cat(list(costs)).mean()) if costs else 1.0
    ranked: dict[int, list[tuple[float, int, float]]] = {}
    for index, (group, score, cost, removed) in enumerate(zip(groups, scores, costs, gone, strict=True)):
        alive = (~removed).nonzero().squeeze(1)
        removable = len(alive) - max(1, math.ceil(min_layer_density * group.size))
        if removable <= 0:
            continue
        alive_scores = score[alive]
        scale = alive_scores.mean() if normalize_per_layer else 1.0
        normalised = alive_scores / scale if scale > 0 else torch.zeros_like(alive_scores)
        per_weight = normalised / (cost[alive] / mean_cost).clamp(min=1e-12)
        order = per_weight.argsort()[:removable]
        ranked[index] = [(float(per_weight[i]), int(alive[i]), float(cost[alive[i]])) for i in order]
    # a candidate is one channel, or, for tied groups, the r-th cheapest channel of each of them together
    candidates: list[tuple[float, float, list[tuple[int, int]]]] = []
    ties: dict[str, list[int]] = {}
    for index in ranked:
        tie = groups[index].tie
        if tie is None:
            candidates += [(key, cost, [(index, channel)]) for key, channel, cost in ranked[index]]
        else:
            ties.setdefault(tie, []).append(index)
    for members in ties.values():
        if len(members) < sum(1 for g in groups if g.tie == groups[members[0]].tie):
            continue  # a tied group that can lose nothing holds the others back
        for rank in range(min(len(ranked[i]) for i in members)):
            picks = [ranked[i][rank] for i in members]
            key = sum(p[0] for p in picks) / len(picks)
            candidates.append((key, sum(p[2] for p in picks), [(i, p[1]) for i, p in zip(members, picks, strict=True)]))
    candidates.sort(key=lambda c: c[0])
    chosen: dict[str, list[int]] = {}
    spent = 0.0
    for _, cost, picks in candidates:
        # a first channel larger than the budget is still taken (up to twice the budget) rather than never pruning
        if spent + cost > budget and not (spent == 0 and cost <= 2 * budget):
            continue
        spent += cost
        for index, channel in picks:
            chosen.setdefault(groups[index].name, []).append(channel)
    return {name: torch.tensor(sorted(chs), dtype=torch.long) for name, chs in chosen.items()}


def channel_elements(group: ChannelGroup, channels: Tensor, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Flat element indices, per parameter, of the slices that belong to ``channels``."""
    chosen = torch.zeros(group.size, dtype=torch.bool)
    chosen[channels] = True
    elements = {}
    for member in group.members:
        positions = chosen[member.channel].nonzero().squeeze(1)
        if positions.numel() == 0:
            continue
        param = params[member.param]
        mask = torch.zeros(param.shape, dtype=torch.bool)
        mask.index_fill_(member.dim, positions, True)
        flat = mask.view(-1).nonzero().squeeze(1).to(param.device)
        if member.param in elements:
            flat = torch.unique(torch.cat([elements[member.param], flat]))
        elements[member.param] = flat
    return elements


def select(
    groups: Sequence[ChannelGroup],
    params: Mapping[str, Tensor],
    saliency: Mapping[str, Tensor],
    weights: Mapping[str, Tensor],
    budget: float,
    min_layer_density: float,
    pruned: Mapping[str, Tensor] | None = None,
    normalize_per_layer: bool = True,
) -> dict[str, Tensor]:
    """Whole channels, lowest saliency per weight saved first, holding about ``budget`` of the ``weights``' entries.

    Args:
        groups: The channel groups (``find_groups``).
        params: The model's parameters by name (every group member's slices are indexed in them).
        saliency: Per-parameter scores, shaped like the parameters (any subset).
        weights: The prunable weights: what a channel's removal is counted in.
        budget: Prunable weights to remove.
        min_layer_density: Every group keeps at least this share of its channels (and at least one).
        pruned: Per-parameter masks of what is already cut (``True``); channels already gone are not chosen again.
        normalize_per_layer: Rank saliency normalised per group (see :func:`select_channels`).

    Returns:
        Flat element indices to mask, per parameter name, of every slice of the chosen channels that is not cut yet.
    """
    pruned = pruned or {}
    chosen = select_channels(
        groups,
        [channel_scores(g, saliency) for g in groups],
        [channel_cost(g, weights) for g in groups],
        [removed_channels(g, pruned) for g in groups],
        budget=budget,
        min_layer_density=min_layer_density,
        normalize_per_layer=normalize_per_layer,
    )
    by_name = {g.name: g for g in groups}
    selection: dict[str, Tensor] = {}
    for name, channels in chosen.items():
        for param, flat in channel_elements(by_name[name], channels, params).items():
            selection[param] = flat if param not in selection else torch.unique(torch.cat([selection[param], flat]))
    # only what is not cut yet
    return {p: i[~pruned[p].view(-1)[i.to(pruned[p].device)]] if p in pruned else i for p, i in selection.items()}
