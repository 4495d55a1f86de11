"""A bound on torch-pruning's search of one channel group, so that no third-party graph can make it run forever.

torch-pruning follows a group's channels from layer to layer (``DependencyGraph.get_pruning_group``), mapping their
indices through every reshape, slice and concatenation on the way. Where those mappings go wrong (the halves a rotary
embedding slices and concatenates again, the splits of a cascaded attention) the search reaches the same layer again
and again with new indices and never ends: a Hugging Face Llama spun 40 minutes on one 16-channel projection, timm's
``efficientvit_m0`` over 5 minutes (torch-pruning's own tracker has the same endless loop on Qwen3).

A sound group reaches each layer with a few index sets: one or two in ResNet-50, DenseNet-121, torchvision's ViT-B/16,
ConvNeXt, RegNet, MobileNetV3 and BERT, 9 to 10 in timm's ViTs (tiny to base), whose queries, keys and values are
unbound from one tensor; the endless searches passed 64 within a second. :func:`bounded_search` stops a search that
reaches one layer more than :data:`MAX_REVISITS` times, or runs longer than :data:`MAX_GROUP_SECONDS`, with a
:class:`SearchLimit`: that group is left out of pruning (and named at setup), every other group is traced as usual.
"""

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.group import Group

# how often one group's search may reach the same layer (with the same pruning function) before it is given up
MAX_REVISITS = 32
# how long one group's search may run before it is given up (a backstop for index lists that grow without revisits)
MAX_GROUP_SECONDS = 10.0
_STATE = "_lightning_prune_search"


class SearchLimit(RuntimeError):
    """torch-pruning's search of a group went past a bound: the group is left out."""


class _Search:
    """What one group's search has done so far: the index sets it reached each (layer, pruning function) with."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.reached: dict[tuple, list] = {}


def _search_of(group: Group) -> _Search:
    return group.__dict__.setdefault(_STATE, _Search())


def _describe(node: Any) -> str:
    return str(getattr(node, "name", None) or node)


@contextlib.contextmanager
def bounded_search(max_revisits: int = MAX_REVISITS, max_seconds: float = MAX_GROUP_SECONDS) -> Iterator[None]:
    """While active, every group torch-pruning builds raises :class:`SearchLimit` once its search reaches one layer
    more than ``max_revisits`` times or has run ``max_seconds``.

    torch-pruning adds each layer it reaches to the group (``Group.add_dep``) before searching on from it: counting
    there bounds the search without changing what a sound group holds. Its check whether a layer was reached with
    the same indices already (``Group.has_pruning_op``) compares with those of that layer only, not the whole group.

    Example:
        >>> import torch, torch_pruning as tp
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 4))
        >>> with bounded_search(max_revisits=1):
        ...     len(graph.get_pruning_group(model[0], tp.prune_linear_out_channels, [0, 1]))
        6
        >>> with bounded_search(max_revisits=0):
        ...     graph.get_pruning_group(model[0], tp.prune_linear_out_channels, [0, 1])
        Traceback (most recent call last):
        ...
        lightning_prune.structured.search.SearchLimit: torch-pruning's search of its channels does not end: ...
    """
    original_add, original_has = Group.add_dep, Group.has_pruning_op

    def add_dep(group: Group, dep: Any, idxs: Any) -> None:
        search = _search_of(group)
        reached = search.reached.setdefault((dep.target, dep.handler), [])
        reached.append(idxs)
        if len(reached) > max_revisits:
            raise SearchLimit(
                f"torch-pruning's search of its channels does not end: it reached {_describe(dep.target)} "
                f"{len(reached)} times with new indices (the bound is MAX_REVISITS={max_revisits}, in "
                "lightning_prune.structured.search); leave the layer out with `exclude=[...]` to silence this"
            )
        if time.monotonic() - search.started > max_seconds:
            raise SearchLimit(
                f"torch-pruning's search of its channels ran past MAX_GROUP_SECONDS={max_seconds} s (in "
                "lightning_prune.structured.search); leave the layer out with `exclude=[...]` to silence this"
            )
        original_add(group, dep, idxs)

    def has_pruning_op(group: Group, dep: Any, idxs: Any) -> bool:
        # what torch-pruning asks before each step, over the whole group (quadratic in its size): only the index
        # sets of the same layer and pruning function can be equal, so only those are compared
        return any(seen == idxs for seen in _search_of(group).reached.get((dep.target, dep.handler), ()))

    Group.add_dep, Group.has_pruning_op = add_dep, has_pruning_op
    try:
        yield
    finally:
        Group.add_dep, Group.has_pruning_op = original_add, original_has


@contextlib.contextmanager
def mapped_once(graph: Any) -> Iterator[None]:
    """Index mappings computed once for many groups of one graph.

    torch-pruning recomputes every index mapping of the graph before each group it builds, since its own pruner
    changes the graph between groups (about a second per group on timm's efficientvit_m0); ours only reads groups,
    so the mappings of the first computation hold for all of them.
    """
    update = index_mapping.update_index_mapping
    update(graph)
    index_mapping.update_index_mapping = lambda _graph: None
    try:
        yield
    finally:
        index_mapping.update_index_mapping = update
