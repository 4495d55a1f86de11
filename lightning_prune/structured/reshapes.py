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
from collections.abc import Iterator
from typing import Any

from torch.overrides import TorchFunctionMode
from torch_pruning.dependency import index_mapping


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
            if node not in self.opaque:
                if splits_channels(*self.shapes.get(node.grad_fn, ((), ()))):
                    self.opaque.append(node)
                else:
                    try:
                        original(graph, node)
                    except ZeroDivisionError:
                        self.opaque.append(node)
            for opaque in self.opaque:
                self._stop_at(opaque)

        index_mapping.update_reshape_index_mapping = update
        try:
            yield
        finally:
            index_mapping.update_reshape_index_mapping = original

    def _stop_at(self, node: Any) -> None:
        for neighbour in (*node.inputs, *node.outputs):
            for dependency in neighbour.dependencies:
                if dependency.target is node:
                    dependency.index_mapping[0] = self._stop

    def _stop(self, indices: list) -> list:
        if indices:
            self.reached = True
        return []
