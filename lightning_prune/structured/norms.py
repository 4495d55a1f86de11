"""LayerNorm / GroupNorm / RMS norms over the alive channels only, while some of their channels are masked.

A LayerNorm's mean and variance span all its channels: a masked channel (zero) still counts, so the network would
compute something else once the channel is removed. While channels are masked, a forward hook on the norm recomputes
its output from the alive channels only (zeros in the masked positions): the masked network then computes exactly
what the compact one will. The hook is the state: it goes when the last of its masked channels is removed, so a
shrunk model carries no hook and runs as fast as a model built at that size. A GroupNorm keeps as many channels in
every group (the selection's classes), so its alive channels still form equal groups.
"""

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prune.structured.foreign import is_rms_norm, rms_epsilon
from lightning_prune.structured.groups import ChannelGroup


class AliveChannelNorm:
    """A forward hook: the norm's output over the alive channels, zero in the ``masked`` positions."""

    def __init__(self, masked: Tensor) -> None:
        self.masked = masked.detach().to("cpu", torch.bool)
        self._alive: dict[torch.device, Tensor] = {}

    def alive(self, device: torch.device) -> Tensor:
        if device not in self._alive:
            self._alive[device] = (~self.masked).nonzero().squeeze(1).to(device)
        return self._alive[device]

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        x = args[0]
        if x.is_nested:  # nn.TransformerEncoder's padded batches in eval: normalise each sequence
            return torch.nested.nested_tensor([self.normalise(module, t) for t in x.unbind()])
        return self.normalise(module, x)

    def normalise(self, module: nn.Module, x: Tensor) -> Tensor:
        alive = self.alive(x.device)
        weight = None if module.weight is None else module.weight.index_select(0, alive)
        bias = getattr(module, "bias", None)
        bias = None if bias is None else bias.index_select(0, alive)
        dim = channel_dim(module, x)
        if isinstance(module, nn.GroupNorm):
            kept = F.group_norm(x.index_select(dim, alive), module.num_groups, weight, bias, module.eps)
        elif is_rms_norm(module):
            kept = _rms_norm(x.movedim(dim, -1).index_select(-1, alive), weight, rms_epsilon(module)).movedim(-1, dim)
        else:
            last = x.movedim(dim, -1).index_select(-1, alive)
            kept = F.layer_norm(last, (len(alive),), weight, bias, module.eps).movedim(-1, dim)
        return x.new_zeros(x.shape).index_copy(dim, alive, kept)


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Hugging Face's RMS norm (statistics in float32, scaled in the input's type), over the last dimension."""
    scaled = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return weight * scaled.to(x.dtype)


def channel_dim(norm: nn.Module, x: Tensor) -> int:
    """Where the norm's channels are in its input: 1 for a GroupNorm, the last dimension for a LayerNorm; a
    LayerNorm subclass with a forward of its own (torchvision's LayerNorm2d permutes an image's channels to the end)
    takes channels-first images."""
    if isinstance(norm, nn.GroupNorm):
        return 1
    if is_rms_norm(norm):
        return x.dim() - 1
    if type(norm).forward is nn.LayerNorm.forward or x.dim() < 3 or x.shape[1] != norm_width(norm):
        return x.dim() - 1
    return 1


def norm_hook(module: nn.Module) -> AliveChannelNorm | None:
    return next((h for h in module._forward_hooks.values() if isinstance(h, AliveChannelNorm)), None)


def remove_norm_hook(module: nn.Module) -> None:
    for key in [k for k, h in module._forward_hooks.items() if isinstance(h, AliveChannelNorm)]:
        del module._forward_hooks[key]


def set_masked(module: nn.Module, masked: Tensor) -> None:
    """Normalise ``module`` over the channels not ``masked`` (no hook at all when none is)."""
    remove_norm_hook(module)
    if not masked.any():
        return
    if isinstance(module, nn.GroupNorm):
        alive_per_group = (~masked).view(module.num_groups, -1).sum(1)
        if (alive_per_group != alive_per_group[0]).any() or alive_per_group[0] == 0:
            raise ValueError(f"a GroupNorm must keep as many channels (and some) in each group: {alive_per_group}")
    module.register_forward_hook(AliveChannelNorm(masked))


def norm_width(module: nn.Module) -> int:
    if is_rms_norm(module):
        return module.weight.shape[0]
    return module.normalized_shape[-1] if isinstance(module, nn.LayerNorm) else module.num_channels


def refresh_norms(model: nn.Module, groups: Sequence[ChannelGroup], gone: Mapping[str, Tensor]) -> None:
    """Hook every cross-channel norm of ``groups`` so that it ignores the channels ``gone[group.name]`` (True per
    channel of the group) marks masked; unhook those with none."""
    masked: dict[str, Tensor] = {}
    for group in groups:
        for slot in group.norms:
            module = model.get_submodule(slot.param)
            positions = masked.setdefault(slot.param, torch.zeros(norm_width(module), dtype=torch.bool))
            channels = gone.get(group.name)
            if channels is not None:
                positions[slot.index()[channels[slot.channel]]] = True
    for name, positions in masked.items():
        set_masked(model.get_submodule(name), positions)


def ignored_by_norms(model: nn.Module, group: ChannelGroup) -> Tensor:
    """Per channel of ``group``: every cross-channel norm it passes ignores it (True when it passes none). Only such
    a channel can be removed without changing what the norms compute."""
    ignored = torch.ones(group.size, dtype=torch.bool)
    for slot in group.norms:
        hook = norm_hook(model.get_submodule(slot.param))
        per_position = hook.masked[slot.index()] if hook is not None else torch.zeros(len(slot.channel), dtype=bool)
        by_channel = torch.ones(group.size, dtype=torch.int32)
        by_channel.scatter_reduce_(0, slot.channel, per_position.int(), "amin")
        ignored &= by_channel.bool()
    return ignored


def slice_norm_hook(module: nn.Module, kept: Tensor) -> None:
    """After removal: keep the hook's masks of the ``kept`` positions only (and drop it when none is masked)."""
    hook = norm_hook(module)
    if hook is not None:
        set_masked(module, hook.masked[kept.cpu()])
