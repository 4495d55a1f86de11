"""Physical removal of masked channels: the model, and each training step, get smaller.

A channel is removable when every slice that produces it is masked (so it outputs exactly zero) and every
cross-channel norm it passes ignores it: removing it then changes nothing the network computes, only its size. The
groups' rules hold after removal: whole units go, every class loses as many channels, tied groups as many units,
and every class keeps at least one. Removal slices every member, buffer and norm hook, then sets the layers' size
attributes from their new shapes; an attention layer whose heads got narrower has its query projection rescaled so
that its scores (divided by the square root of the head width) stay the same.
"""

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_prune.checkpoints import fit_attributes, fit_width_attributes, is_depthwise
from lightning_prune.optim import Slices, slice_like
from lightning_prune.structured.groups import ChannelGroup, Member, owner
from lightning_prune.structured.norms import ignored_by_norms, norm_width, slice_norm_hook
from lightning_prune.structured.selection import removed_channels


def removable(model: nn.Module, groups: Sequence[ChannelGroup], pruned: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Per group name, the channels to remove now: masked (``pruned``) and ignored by the norms, under the groups'
    rules."""
    cache: dict = {}
    gone = {g.name: balanced(g, removed_channels(g, pruned, cache) & ignored_by_norms(model, g)) for g in groups}
    for tie in {g.tie for g in groups if g.tie is not None}:
        tied = [g for g in groups if g.tie == tie]
        # one hidden size: each tied group loses as many units as the one that loses fewest
        count = min(int(gone[g.name].sum()) for g in tied)
        for group in tied:
            gone[group.name] = _first(gone[group.name], count)
    return {name: channels.nonzero().squeeze(1) for name, channels in gone.items() if channels.any()}


def balanced(group: ChannelGroup, gone: Tensor) -> Tensor:
    """Of the ``gone`` channels, as many whole units per class as every class can give while keeping one."""
    units, classes = group.unit_of(), group.class_of()
    unit_gone = torch.ones(int(units.max()) + 1, dtype=torch.int32)
    unit_gone.scatter_reduce_(0, units, gone.int(), "amin")
    unit_class = torch.zeros_like(unit_gone, dtype=torch.long).scatter_(0, units, classes)
    keep = torch.zeros_like(unit_gone, dtype=torch.bool)
    count = min(
        min(int(unit_gone[unit_class == c].sum()), int((unit_class == c).sum()) - 1)
        for c in range(int(unit_class.max()) + 1)
    )
    for c in range(int(unit_class.max()) + 1):
        keep |= _first(unit_gone.bool() & (unit_class == c), count)
    return keep[units]


def _first(flags: Tensor, count: int) -> Tensor:
    """The first ``count`` True entries of ``flags``."""
    chosen = torch.zeros_like(flags)
    chosen[flags.nonzero().squeeze(1)[:count]] = True
    return chosen


def remove_channels(model: nn.Module, groups: Sequence[ChannelGroup], remove: Mapping[str, Tensor]) -> Slices:
    """Physically remove channels. Returns, per changed parameter (by its name before removal), the kept positions
    along each sliced dimension, to slice optimizer state and other per-weight buffers the same way."""
    by_name = {g.name: g for g in groups}
    keep: dict[tuple[str, str, int], Tensor] = {}  # (kind, name, dim) -> kept positions along dim
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for name, channels in remove.items():
        group = by_name[name]
        for kind, slots in (("param", group.members), ("buffer", group.buffers), ("norm", group.norms)):
            for slot in slots:
                width = tensors[slot.param].shape[slot.dim] if kind != "norm" else None
                _drop(keep, (kind, slot.param, slot.dim), slot, channels, width, model)
    heads = _head_widths(model)
    depthwise = {n for n, m in model.named_modules() if is_depthwise(m)}
    slices: Slices = {}
    for (kind, name, dim), kept in sorted(keep.items(), key=lambda item: item[0]):
        if kind == "param":
            slices.setdefault(name, []).append((dim, kept))
    for name, dims in slices.items():
        _replace(model, name, slice_like(model.get_parameter(name).detach(), dims), parameter=True)
    for (kind, name, dim), kept in keep.items():
        if kind == "buffer":
            _replace(model, name, model.get_buffer(name).index_select(dim, kept), parameter=False)
    touched = {owner(name) for (kind, name, _) in keep if kind != "norm"}
    for module_name in touched:
        fit_attributes(model.get_submodule(module_name), module_name in depthwise)
    for (kind, name, _), kept in keep.items():
        if kind == "norm":
            _fit_norm(model.get_submodule(name), kept)
    _rescale_queries(model, heads)
    fit_width_attributes(model)
    return slices


def _drop(
    keep: dict, key: tuple[str, str, int], slot: Member, channels: Tensor, width: int | None, model: nn.Module
) -> None:
    """Remove the positions of ``channels`` from ``keep[key]`` (all positions along the dimension at first)."""
    if key not in keep:
        if width is None:  # a norm layer: as wide as its channels
            width = norm_width(model.get_submodule(key[1]))
        keep[key] = torch.arange(width)
    dropped = slot.index()[torch.isin(slot.channel, channels)]
    keep[key] = keep[key][~torch.isin(keep[key], dropped)]


def _replace(model: nn.Module, name: str, value: Tensor, parameter: bool) -> None:
    module = model.get_submodule(owner(name))
    attr = name.rsplit(".", 1)[-1]
    if parameter:
        old = getattr(module, attr)
        value = nn.Parameter(value.contiguous(), requires_grad=old.requires_grad)
    setattr(module, attr, value)


def _fit_norm(norm: nn.Module, kept: Tensor) -> None:
    """A norm's width follows its kept channels (also without affine parameters), and so does its hook."""
    if isinstance(norm, nn.LayerNorm):
        norm.normalized_shape = (*norm.normalized_shape[:-1], len(kept))
    elif isinstance(norm, nn.GroupNorm):
        norm.num_channels = len(kept)
    # an RMS norm reads its width from its scale
    slice_norm_hook(norm, kept)


def _head_widths(model: nn.Module) -> dict[str, int]:
    return {n: m.head_dim for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}


@torch.no_grad()
def _rescale_queries(model: nn.Module, before: Mapping[str, int]) -> None:
    """Attention scores are ``q.k / sqrt(head_dim)``. The removed dimensions contributed zero to ``q.k`` (masked),
    but the divisor shrank with the heads: scale the queries by ``sqrt(new / old)`` so the scores stay the same."""
    for name, old in before.items():
        attention = model.get_submodule(name)
        if attention.head_dim == old:
            continue
        factor = math.sqrt(attention.head_dim / old)
        queries = attention.embed_dim
        weight = attention.in_proj_weight if attention.in_proj_weight is not None else attention.q_proj_weight
        weight[:queries].mul_(factor)
        if attention.in_proj_bias is not None:
            attention.in_proj_bias[:queries].mul_(factor)
