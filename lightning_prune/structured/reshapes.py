"""Reshapes that torch-pruning cannot follow channels through, and keeping it from trying.

torch-pruning maps channel indices across a reshape from the channel counts it infers on both sides. A channel
shuffle (ShuffleNet: ``view`` the channels as ``(groups, channels / groups)``, ``transpose`` those two, ``view``
back) reorders channels in a way no such mapping describes: torch-pruning's inference then goes wrong, grows the index
lists at every shuffle (seconds per group), and where the shuffle feeds a ``chunk`` it infers 0 channels and divides
by them (the ZeroDivisionError ShuffleNetV2 used to die with).

:class:`ReshapeGuard` records the input and output shape of every operation of the traced forward, marks every
reshape that splits the channel dimension in two (and any reshape torch-pruning fails to map), and stops
torch-pruning's index propagation at those reshapes. A group that reaches one is reported, so that it is left out;
every other group is traced as usual.
"""

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

from torch.overrides import TorchFunctionMode
from torch_pruning.dependency import index_mapping

# the most features a group's channels may flatten into (VGG's 512 x 7 x 7 = 25088 is far below)
MAX_INDICES = 1 << 18


class _ShapeRecorder(TorchFunctionMode):
    """Input and output shapes of every operation, by the autograd node of its output."""

    def __init__(self, shapes: dict) -> None:
        super().__init__()
        self.shapes = shapes

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        result = func(*args, **(kwargs or {}))
        grad_fn = getattr(result, "grad_fn", None)
        if grad_fn is not None and args and hasattr(args[0], "shape"):
            self.shapes.setdefault(grad_fn, (tuple(args[0].shape), tuple(result.shape)))
        return result


def splits_channels(before: tuple[int, ...], after: tuple[int, ...]) -> bool:
    """A reshape that keeps the batch and trailing dimensions and splits the channel dimension (1) in two:
    ``(n, c, h, w) -> (n, g, c / g, h, w)``, the first half of a channel shuffle. (Merging them back is left to
    torch-pruning: a merge looks like the flattening before a classifier, and the split already stops the groups.)"""
    return (
        len(after) == len(before) + 1
        and len(before) >= 2
        and before[0] == after[0]
        and before[2:] == after[3:]
        and after[1] * after[2] == before[1]
        and after[1] > 1
        and after[2] > 1
    )


def flattens(before: tuple[int, ...], after: tuple[int, ...]) -> bool:
    """A reshape between channels (with trailing dimensions) and one feature dimension: ``(n, c, h, w) <-> (n,
    c * h * w)``, the flattening before a classifier (or its reverse), which torch-pruning maps."""
    if len(before) < len(after):
        before, after = after, before
    return len(after) == 2 and len(before) > 2 and before[0] == after[0] and math.prod(before[1:]) == after[1]


class ReshapeGuard:
    """Keeps torch-pruning out of the reshapes it cannot follow, and tells when a group reached one."""

    def __init__(self) -> None:
        self.shapes: dict = {}
        self.opaque: list = []  # torch-pruning's nodes of such reshapes
        self.reached = False

    def recording(self) -> TorchFunctionMode:
        """Record shapes while the forward is traced."""
        return _ShapeRecorder(self.shapes)

    @contextlib.contextmanager
    def guarding(self) -> Iterator[None]:
        """While torch-pruning builds the graph or a group: no index mapping across an opaque reshape."""
        original = index_mapping.update_reshape_index_mapping

        def update(graph: Any, node: Any) -> None:
            shapes = self.shapes.get(node.grad_fn)
            if node not in self.opaque:
                if shapes is not None and splits_channels(*shapes):
                    self.opaque.append(node)
                else:
                    try:
                        original(graph, node)
                    except ZeroDivisionError:
                        self.opaque.append(node)
                    if shapes is not None and not flattens(*shapes):
                        self._keep_indices(node)
            for opaque in self.opaque:
                self._stop_at(opaque)

        concat = index_mapping.update_concat_index_mapping

        def update_concat(graph: Any, node: Any) -> None:
            # torch-pruning cannot size a concatenation whose inputs' channels it does not know (GPT-2's key cache):
            # it fails on them (a TypeError over None); no channel is followed through such a concatenation
            if node in self.opaque:
                return
            try:
                concat(graph, node)
            except (TypeError, ZeroDivisionError):
                self.opaque.append(node)
                self._stop_at(node)

        flatten = index_mapping._FlattenIndexMapping.__call__

        def bounded(mapping: Any, indices: list) -> list:
            # a flatten mapping torch-pruning got wrong multiplies the indices at every reshape: give up on the group
            if not mapping.reverse and len(indices) * mapping._stride > MAX_INDICES:
                raise RuntimeError(f"its channels would map to over {MAX_INDICES} features through a reshape")
            return flatten(mapping, indices)

        index_mapping.update_reshape_index_mapping = update
        index_mapping.update_concat_index_mapping = update_concat
        index_mapping._FlattenIndexMapping.__call__ = bounded
        try:
            with warnings.catch_warnings():
                # torch-pruning's channel inference gives up on deep reshape chains (Swin's windows), loudly
                warnings.filterwarnings("ignore", message="Maximum recursive depth reached")
                yield
        finally:
            index_mapping.update_reshape_index_mapping = original
            index_mapping.update_concat_index_mapping = concat
            index_mapping._FlattenIndexMapping.__call__ = flatten

    @staticmethod
    def _keep_indices(node: Any) -> None:
        """torch-pruning maps indices across a reshape as if it flattened channels into features whenever the
        channel counts it infers on the two sides differ. A reshape that moves no channel into features (a Swin
        window partition keeps channels last) gets no such mapping: indices pass unchanged, and the check by doing
        tells whether that was right; a wrong flatten mapping multiplies the indices at every such reshape."""
        for neighbour in (*node.inputs, *node.outputs, node):
            for dependency in neighbour.dependencies:
                if (dependency.target is node or neighbour is node) and isinstance(
                    dependency.index_mapping[0], index_mapping._FlattenIndexMapping
                ):
                    dependency.index_mapping[0] = None

    def _stop_at(self, node: Any) -> None:
        for neighbour in (*node.inputs, *node.outputs):
            for dependency in neighbour.dependencies:
                if dependency.target is node:
                    dependency.index_mapping[0] = self._stop

    def _stop(self, indices: list) -> list:
        if indices:
            self.reached = True
        return []
