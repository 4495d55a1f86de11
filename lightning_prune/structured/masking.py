"""Masking whole channels: zero every slice of them, and let the cross-channel norms ignore them.

The pruner masks through its own masks (``PruningMasks``) and then calls
:func:`~lightning_prune.structured.norms.refresh_norms`; :func:`mask_channels` does both at once for scripts and
tests that choose channels themselves.
"""

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_prune.structured.groups import ChannelGroup
from lightning_prune.structured.norms import ignored_by_norms, refresh_norms
from lightning_prune.structured.selection import channel_elements


@torch.no_grad()
def mask_channels(model: nn.Module, groups: Sequence[ChannelGroup], chosen: Mapping[str, Tensor]) -> None:
    """Mask ``chosen[group.name]`` (channel indices) of each group: every slice of them becomes zero, and every
    LayerNorm / GroupNorm they pass normalises over the other channels, so that the masked model computes exactly
    what the model without those channels computes. Channels masked before stay masked."""
    params = dict(model.named_parameters())
    # what the norms ignore already, and the chosen channels
    gone = {group.name: ignored_by_norms(model, group) for group in groups if group.norms}
    for group in groups:
        channels = chosen.get(group.name)
        if channels is None or len(channels) == 0:
            continue
        for name, flat in channel_elements(group, channels, params).items():
            params[name].view(-1)[flat] = 0
        if group.norms:
            gone[group.name][channels] = True
    refresh_norms(model, groups, gone)
