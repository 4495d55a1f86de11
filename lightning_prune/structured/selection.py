"""Choosing channels to cut: per-channel saliency and cost, and a budgeted greedy selection.

Public so that scripts can choose channels exactly as the callback does (``select``), e.g. to measure what removing a
given share of the weights buys.
"""

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from lightning_prune.structured.groups import ChannelGroup, Member

# rounds of choosing per call: each takes what the previous one's shared slices left of the budget
SELECTION_ROUNDS = 4
# per-position reductions of named tensors, computed once per (tensor, dim, reduction) for all groups of one call
Cache = dict[tuple[str, int, str], Tensor]


def along(tensor: Tensor, dim: int, reduce: str) -> Tensor:
    """One value per position along ``dim``: ``tensor`` reduced over every other dimension, by "sum", "abs_sum" or
    "all"."""
    if reduce == "abs_sum":
        tensor = tensor.detach().abs()
    others = [d for d in range(tensor.dim()) if d != dim % tensor.dim()]
    if not others:
        return tensor
    return tensor.all(dim=others) if reduce == "all" else tensor.sum(dim=others)


def _along(cache: Cache | None, name: str, tensor: Tensor, dim: int, reduce: str) -> Tensor:
    key = (name, dim, reduce)
    if cache is not None and key in cache:
        return cache[key]
    value = along(tensor, dim, reduce).cpu()
    if cache is not None:
        cache[key] = value
    return value


def _per_channel(group: ChannelGroup, per_position: Callable[[Member], Tensor | None]) -> Tensor:
    """Sum a per-position quantity of every member (over its whole dimension) into the group's channels."""
    total = torch.zeros(group.size, dtype=torch.float64)
    for member in group.members:
        values = per_position(member)
        if values is not None:
            total.index_add_(0, member.channel, values.double()[member.index()])
    return total


def channel_scores(group: ChannelGroup, saliency: Mapping[str, Tensor], cache: Cache | None = None) -> Tensor:
    """A group's channel saliency: the sum of its members' saliency over each channel's slices."""

    def per_position(member: Member) -> Tensor | None:
        values = saliency.get(member.param)
        return None if values is None else _along(cache, member.param, values, member.dim, "abs_sum")

    return _per_channel(group, per_position)


def channel_cost(
    group: ChannelGroup,
    weights: Mapping[str, Tensor],
    pruned: Mapping[str, Tensor] | None = None,
    cache: Cache | None = None,
    entry_costs: Mapping[str, float] | None = None,
) -> Tensor:
    """How many prunable-weight entries each channel of the group holds that are not cut yet (``pruned``): what
    removing it saves. With ``entry_costs`` (per weight name, e.g. MACs per entry) each entry counts that much."""

    def per_position(member: Member) -> Tensor | None:
        weight = weights.get(member.param)
        if weight is None:
            return None
        per_slice = weight.numel() // weight.shape[member.dim]
        scale = 1.0 if entry_costs is None else entry_costs.get(member.param, 0.0)
        cut = (pruned or {}).get(member.param)
        if cut is None:
            return torch.full((weight.shape[member.dim],), float(per_slice) * scale)
        return (per_slice - _along(cache, member.param, cut, member.dim, "sum")) * scale

    return _per_channel(group, per_position)


def removed_channels(group: ChannelGroup, pruned: Mapping[str, Tensor], cache: Cache | None = None) -> Tensor:
    """Boolean per channel: every producing slice of it is masked."""
    gone = torch.ones(group.size, dtype=torch.bool)
    any_producer = False
    for member in group.members:
        if not member.produces or member.param not in pruned:
            continue
        any_producer = True
        per_position = _along(cache, member.param, pruned[member.param], member.dim, "all")
        channel_done = torch.ones(group.size, dtype=torch.int32)
        channel_done.scatter_reduce_(0, member.channel, per_position[member.index()].int(), "amin")
        gone &= channel_done.bool()
    return gone if any_producer else torch.zeros(group.size, dtype=torch.bool)


# a way to cut: its key (saliency per weight saved, lower goes first), its cost in weights, and per group the
# channels it removes
Candidate = tuple[float, float, list[tuple[int, list[int]]]]


def _ranked_steps(
    group: ChannelGroup,
    score: Tensor,
    cost: Tensor,
    removed: Tensor,
    mean_cost: float,
    keep: int,
    normalize: bool,
    per_cost: bool = True,
) -> list[tuple[float, float, list[int]]]:
    """A group's cuts from cheapest to dearest, each one unit per class (the r-th cheapest of each class), so every
    class loses as many; only as many as leave ``keep`` channels, and one unit per class."""
    units, classes = group.unit_of(), group.class_of()
    count = int(units.max()) + 1
    unit_score = torch.zeros(count, dtype=torch.float64).index_add_(0, units, score.double())
    unit_cost = torch.zeros(count, dtype=torch.float64).index_add_(0, units, cost.double())
    unit_alive = torch.zeros(count, dtype=torch.bool).index_fill_(0, units[~removed], True)
    unit_class = torch.zeros(count, dtype=torch.long).scatter_(0, units, classes)
    alive_scores = score[~removed].double()
    scale = alive_scores.mean() if normalize and alive_scores.numel() else 1.0
    normalised = unit_score / scale if scale > 0 else torch.zeros_like(unit_score)
    per_weight = normalised / (unit_cost / mean_cost).clamp(min=1e-12) if per_cost else normalised
    n_classes = int(unit_class.max()) + 1
    per_class_keep = max(1, math.ceil(keep / (n_classes * (group.size // count))))
    orders = []
    for c in range(n_classes):
        alive = (unit_alive & (unit_class == c)).nonzero().squeeze(1)
        orders.append(alive[per_weight[alive].argsort()])
    depth = min(len(o) for o in orders) - per_class_keep
    if depth <= 0:
        return []
    # rank r: the r-th unit of every class, with its key (mean saliency per weight), cost, and channels
    picks = torch.stack([o[:depth] for o in orders], dim=1)
    keys, costs = per_weight[picks].mean(1).tolist(), unit_cost[picks].sum(1).tolist()
    channels_of = [[] for _ in range(count)]
    for channel, unit in enumerate(units.tolist()):
        channels_of[unit].append(channel)
    return [
        (key, step_cost, [c for unit in row for c in channels_of[unit]])
        for key, step_cost, row in zip(keys, costs, picks.tolist(), strict=True)
    ]


def select_channels(
    groups: Sequence[ChannelGroup],
    scores: Sequence[Tensor],
    costs: Sequence[Tensor],
    gone: Sequence[Tensor],
    budget: float,
    min_layer_density: float,
    normalize_per_layer: bool = True,
    per_cost: bool = True,
) -> dict[str, Tensor]:
    """Channels to cut, cheapest first: the lowest saliency per weight saved (a greedy knapsack), until their
    weights fill ``budget``. With ``per_cost`` False, the lowest saliency first, whatever it saves: the costs only
    count against the budget.

    Saliency is normalised per group (each group's mean is 1, unless ``normalize_per_layer`` is False) so layers of
    different scale compete fairly, and divided by the channel's share of weights: a channel that frees many weights
    for little saliency goes first, one that frees few (an input convolution's filter) is protected. Every group
    keeps at least ``max(1, ceil(min_layer_density * size))`` channels. A group's rules hold: its units go whole and
    every class (a grouped convolution's groups, a GroupNorm's groups, an attention layer's heads) loses as many,
    one step taking the r-th cheapest unit of every class. Tied groups (the layers of one nn.LSTM, which share one
    hidden size) lose channels together, the r-th cheapest step of each at once, so the removal really shrinks them.
    """
    mean_cost = float(torch.cat(list(costs)).mean()) if costs else 1.0
    ranked: dict[int, list[tuple[float, float, list[int]]]] = {}
    for index, (group, score, cost, removed) in enumerate(zip(groups, scores, costs, gone, strict=True)):
        keep = max(1, math.ceil(min_layer_density * group.size))
        steps = _ranked_steps(group, score, cost, removed, mean_cost, keep, normalize_per_layer, per_cost)
        if steps:
            ranked[index] = steps
    candidates: list[Candidate] = []
    ties: dict[str, list[int]] = {}
    for index in ranked:
        tie = groups[index].tie
        if tie is None:
            candidates += [(key, cost, [(index, channels)]) for key, cost, channels in ranked[index]]
        else:
            ties.setdefault(tie, []).append(index)
    for members in ties.values():
        if len(members) < sum(1 for g in groups if g.tie == groups[members[0]].tie):
            continue  # a tied group that can lose nothing holds the others back
        for rank in range(min(len(ranked[i]) for i in members)):
            picks = [ranked[i][rank] for i in members]
            key = sum(p[0] for p in picks) / len(picks)
            candidates.append((key, sum(p[1] for p in picks), [(i, p[2]) for i, p in zip(members, picks, strict=True)]))
    candidates.sort(key=lambda c: c[0])
    chosen: dict[str, list[int]] = {}
    spent = 0.0
    for _, cost, picks in candidates:
        # a step past the budget is still taken when it overshoots by less than what is left to fill: the cut lands
        # as near the budget as whole steps allow (a first channel larger than the budget is taken, up to twice it)
        overshoot = spent + cost - budget
        if overshoot > 0 and overshoot >= budget - spent:
            continue
        spent += cost
        for index, channels in picks:
            chosen.setdefault(groups[index].name, []).extend(channels)
    return {name: torch.tensor(sorted(chs), dtype=torch.long) for name, chs in chosen.items()}


def cheapest_cut(
    groups: Sequence[ChannelGroup],
    weights: Mapping[str, Tensor],
    pruned: Mapping[str, Tensor],
    min_layer_density: float,
    entry_costs: Mapping[str, float] | None = None,
) -> float:
    """The fewest prunable weights (or their ``entry_costs``) one more cut can remove: the cheapest step of a group
    that can still lose one (of every tied group at once); ``inf`` when none can."""
    steps: dict[str, float] = {}
    blocked: set[str] = set()
    cache: Cache = {}
    for group in groups:
        key = group.tie or group.name
        cost = channel_cost(group, weights, pruned, cache, entry_costs)
        keep = max(1, math.ceil(min_layer_density * group.size))
        removed = removed_channels(group, pruned, cache)
        ranked = _ranked_steps(group, torch.zeros(group.size), cost, removed, 1.0, keep, False)
        if not ranked:
            blocked.add(key)  # a tied group that can lose nothing holds the others back
            continue
        steps[key] = steps.get(key, 0.0) + min(step_cost for _, step_cost, _ in ranked)
    return min((c for key, c in steps.items() if key not in blocked and c > 0), default=math.inf)


def channel_elements(group: ChannelGroup, channels: Tensor, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Flat element indices, per parameter, of the slices that belong to ``channels``."""
    chosen = torch.zeros(group.size, dtype=torch.bool)
    chosen[channels] = True
    elements = {}
    for member in group.members:
        positions = member.index()[chosen[member.channel]]
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


def budget_units(weights: Mapping[str, Tensor], entry_costs: Mapping[str, float] | None = None) -> float:
    """What the non-zero entries of ``weights`` count for against a budget: one each, or their ``entry_costs``
    (by name; absent names count nothing)."""
    if entry_costs is None:
        return sum(int(w.count_nonzero()) for w in weights.values())
    return sum(entry_costs.get(name, 0.0) * int(w.count_nonzero()) for name, w in weights.items())


def select(
    groups: Sequence[ChannelGroup],
    params: Mapping[str, Tensor],
    saliency: Mapping[str, Tensor],
    weights: Mapping[str, Tensor],
    budget: float,
    min_layer_density: float,
    pruned: Mapping[str, Tensor] | None = None,
    normalize_per_layer: bool = True,
    entry_costs: Mapping[str, float] | None = None,
    per_cost: bool = True,
) -> dict[str, Tensor]:
    """Whole channels, lowest saliency per weight saved first, holding about ``budget`` of the ``weights``' entries
    (of what they cost, with ``entry_costs``).

    A channel's cost counts its slices in every layer, and two chosen channels can share slices (layer A's output c
    is layer B's input c, and B's output d shares B[d, c]): what one round of choosing removes falls short of its
    budget, so the shortfall is chosen again, a few rounds.

    Args:
        groups: The channel groups (``find_groups``).
        params: The model's parameters by name (every group member's slices are indexed in them).
        saliency: Per-parameter scores, shaped like the parameters (any subset).
        weights: The prunable weights: what a channel's removal is counted in.
        budget: Prunable weights to remove.
        min_layer_density: Every group keeps at least this share of its channels (and at least one).
        pruned: Per-parameter masks of what is already cut (``True``); channels already gone are not chosen again.
            Not modified.
        normalize_per_layer: Rank saliency normalised per group (see :func:`select_channels`).
        entry_costs: What one entry of each weight counts for (by name; absent names count nothing), e.g. the MACs
            per sample it stands for: ``budget`` is then in MACs. None: every entry counts 1.
        per_cost: Rank by saliency per unit saved (a channel that frees much for little saliency goes first, one
            that frees little is protected), or by saliency alone (False), the costs only counting against the
            budget. Per MAC, ResNet-18 on 32x32 inputs would lose all but 2 of layer1's 64 channels before
            anything else (their maps are the largest): a FLOPs budget ranks by saliency alone.

    Returns:
        Flat element indices to mask, per parameter name, of every slice of the chosen channels that is not cut yet.
    """
    pruned = dict(pruned or {})
    owned: set[str] = set()  # the masks copied before this call marks them
    chosen: dict[str, Tensor] = {}
    for _ in range(SELECTION_ROUNDS):
        cache: Cache = {}
        channels = select_channels(
            groups,
            [channel_scores(g, saliency, cache) for g in groups],
            [channel_cost(g, weights, pruned, cache, entry_costs) for g in groups],
            [removed_channels(g, pruned, cache) for g in groups],
            budget=budget,
            min_layer_density=min_layer_density,
            normalize_per_layer=normalize_per_layer,
            per_cost=per_cost,
        )
        gained = 0.0
        for name, indices in _elements(groups, channels, params).items():
            if name not in owned:
                mask = pruned.get(name)
                pruned[name] = torch.zeros(params[name].shape, dtype=torch.bool) if mask is None else mask.clone()
                owned.add(name)
            flat = pruned[name].view(-1)
            new = indices[~flat[indices.to(flat.device)].to(indices.device)]  # only what is not cut yet
            if name in weights:
                gained += budget_units({name: weights[name].view(-1)[new.to(weights[name].device)]}, entry_costs)
            flat[new.to(flat.device)] = True
            chosen[name] = torch.cat([chosen[name], new]) if name in chosen else new
        budget -= gained
        if gained == 0 or budget <= 0:
            break
    return chosen


def _elements(
    groups: Sequence[ChannelGroup], chosen: Mapping[str, Tensor], params: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Flat element indices, per parameter, of every slice of the ``chosen`` channels of each group (by name)."""
    by_name = {g.name: g for g in groups}
    selection: dict[str, Tensor] = {}
    for name, channels in chosen.items():
        for param, flat in channel_elements(by_name[name], channels, params).items():
            selection[param] = flat if param not in selection else torch.unique(torch.cat([selection[param], flat]))
    return selection
