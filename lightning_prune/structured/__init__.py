"""Structured pruning: channel / hidden-unit groups, budgeted selection, physical shrinking, and compact export.

- ``groups``: what shrinks together (torch-pruning's traced groups for conv / linear layers);
- ``rnn``: recurrent hidden-unit groups and their removal (our own code);
- ``find``: all groups of a model;
- ``selection``: per-channel saliency and cost, the budgeted choice of channels;
- ``shrink``: physical removal of masked channels;
- ``export``: a compact dense copy.

A cut channel is first *masked* (every slice that produces it is zeroed, so it outputs exactly zero), then removed:
removal changes nothing the network computes, only its size.
"""

from lightning_prune.structured.export import compact_copy
from lightning_prune.structured.find import default_roots, find_groups
from lightning_prune.structured.groups import ChannelGroup, Member
from lightning_prune.structured.selection import (
    channel_cost,
    channel_elements,
    channel_scores,
    removed_channels,
    select,
    select_channels,
)
from lightning_prune.structured.shrink import removable, remove_channels

__all__ = [
    "ChannelGroup",
    "Member",
    "channel_cost",
    "channel_elements",
    "channel_scores",
    "compact_copy",
    "default_roots",
    "find_groups",
    "remove_channels",
    "removable",
    "removed_channels",
    "select",
    "select_channels",
]
