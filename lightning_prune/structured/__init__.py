"""Structured pruning: channel / hidden-unit groups, budgeted selection, physical shrinking, and compact export.

- ``groups``: what shrinks together, and the rules some layers add (equal parts, bound units, cross-channel norms);
- ``tracing``: conv / linear / attention groups from torch-pruning's traced graph, its search of each group bounded
  (``search``), layers it does not know made known (``foreign``: GPT-2's Conv1D, RMS norms);
- ``rnn``: recurrent hidden-unit groups; ``attention``: heads of attention layers that name their projections (our
  own code);
- ``find``: all groups of a model; ``plan``: the forward target and input, and which groups can be pruned;
- ``verify``: checking by doing that a group's removal changes nothing;
- ``selection``: per-channel saliency and cost, the budgeted choice of channels;
- ``norms``: LayerNorm / GroupNorm over the alive channels while some are masked; ``masking``: masking channels;
- ``shrink``: physical removal of masked channels;
- ``export``: a compact dense copy; ``state``: the pruner's error message and restored state; ``reach``: what the
  pruned groups can reach of a target over all prunable weights.

A cut channel is first *masked* (every slice that produces it is zeroed, so it outputs exactly zero, and the norms
ignore it), then removed: removal changes nothing the network computes, only its size.
"""

from lightning_prune.structured.export import compact_copy
from lightning_prune.structured.find import default_roots, find_groups
from lightning_prune.structured.groups import ChannelGroup, Member, SkippedGroup
from lightning_prune.structured.masking import mask_channels
from lightning_prune.structured.norms import refresh_norms
from lightning_prune.structured.plan import Plan, forward_targets, plan
from lightning_prune.structured.reach import reach_message
from lightning_prune.structured.selection import (
    budget_units,
    channel_cost,
    channel_elements,
    channel_scores,
    cheapest_cut,
    removed_channels,
    select,
    select_channels,
)
from lightning_prune.structured.shrink import removable, remove_channels
from lightning_prune.structured.state import fit_saved_state, nothing_to_prune

__all__ = [
    "ChannelGroup",
    "Member",
    "Plan",
    "SkippedGroup",
    "budget_units",
    "channel_cost",
    "channel_elements",
    "channel_scores",
    "cheapest_cut",
    "compact_copy",
    "default_roots",
    "find_groups",
    "fit_saved_state",
    "mask_channels",
    "nothing_to_prune",
    "forward_targets",
    "plan",
    "reach_message",
    "refresh_norms",
    "remove_channels",
    "removable",
    "removed_channels",
    "select",
    "select_channels",
]
