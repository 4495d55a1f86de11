"""Channel groups: everything that must shrink together when one channel goes.

A group holds a convolution's output channel, its bias, the batch-norm entry after it, the next layers' input
channels, and every layer tied to it by a residual addition; through a transformer's stream also the embedding,
the layer norms, the attention projections and parameters such as a class token. ``tracing.py`` builds these groups
from torch-pruning's DependencyGraph; recurrent hidden units have their own groups (``rnn.py``).

Some layers add rules on top of "these slices go together": a grouped convolution, a GroupNorm and the heads of an
attention layer split the channels into equal parts that must stay equal (``classes``: every class loses as many
channels), a grouped convolution reading the channels binds one channel of each of its groups together (``units``),
and a LayerNorm / GroupNorm mixes the channels in its statistics (``norms``: masked channels are normalised away).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


class Unsupported(Exception):
    """A group that structured pruning cannot remove exactly; the message says why."""


@dataclass
class Member:
    """One parameter slice that belongs to a group: ``param`` along ``dim``; ``channel[i]`` is the group channel
    that position ``positions[i]`` of that dimension belongs to (a flattened conv output feeds many fc inputs per
    channel). ``positions`` None: the positions are ``0 .. len(channel) - 1``, the whole dimension."""

    param: str
    dim: int
    channel: Tensor
    produces: bool  # True: the slice computes the channel (zero it and the channel is zero); False: it consumes it
    positions: Tensor | None = None

    def index(self) -> Tensor:
        """The positions along ``dim`` this member covers, in the order of ``channel``."""
        return self.positions if self.positions is not None else torch.arange(len(self.channel))


@dataclass
class ChannelGroup:
    """Channels that are removed together, with the parameter slices that go with each.

    ``name`` is torch-pruning's root layer (or ``"<rnn>.l<layer>[_reverse]"`` for a recurrent layer's units);
    ``modules`` every layer (or parameter) that produces the channels, for messages.
    """

    name: str
    size: int
    members: list[Member] = field(default_factory=list)
    # groups with the same tie lose the same number of channels (the layers of one nn.LSTM share a hidden size)
    tie: str | None = None
    modules: list[str] = field(default_factory=list)
    # class of each channel (None: one class): every class loses as many channels, so equal parts stay equal
    classes: Tensor | None = None
    # unit of each channel (None: every channel its own): a unit's channels are removed together
    units: Tensor | None = None
    # buffers sliced with the channels but never masked (batch-norm running statistics); `param` is the buffer
    buffers: list[Member] = field(default_factory=list)
    # LayerNorm / GroupNorm layers whose statistics span these channels; `param` is the module's name
    norms: list[Member] = field(default_factory=list)

    def class_of(self) -> Tensor:
        return self.classes if self.classes is not None else torch.zeros(self.size, dtype=torch.long)

    def unit_of(self) -> Tensor:
        return self.units if self.units is not None else torch.arange(self.size)


@dataclass
class SkippedGroup:
    """A group left out of pruning: the layers whose channels it holds, and why."""

    name: str
    modules: list[str]
    reason: str

    def message(self) -> str:
        shown = ", ".join(repr(m) for m in self.modules[:6])
        more = f" and {len(self.modules) - 6} more" if len(self.modules) > 6 else ""
        return f"structured pruning leaves the output channels of {shown}{more} unpruned: {self.reason}"


def parameter_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its name in ``model``."""
    return {id(p): name for name, p in model.named_parameters()}


def owner(name: str) -> str:
    """The module that holds a parameter (``"conv1.weight"`` -> ``"conv1"``)."""
    return name.rsplit(".", 1)[0] if "." in name else ""


def combine_partitions(size: int, partitions: Sequence[Tensor]) -> Tensor | None:
    """One class per combination of parts: each part of each partition (a part id per channel) then loses as many
    channels when every class does. None when there is no partition.

    Raises:
        Unsupported: The classes differ in size (the parts overlap unevenly), so no removal keeps them all equal.
    """
    if not partitions:
        return None
    combined = torch.stack(list(partitions), dim=1)
    _, classes = torch.unique(combined, dim=0, return_inverse=True)
    counts = torch.bincount(classes)
    if len(set(counts.tolist())) > 1:
        raise Unsupported("its channels are split into parts (groups, heads) that overlap unevenly")
    return classes


def bind_units(size: int, ties: Sequence[Sequence[int]]) -> Tensor | None:
    """A unit id per channel: channels in one tie (transitively) share a unit. None when nothing is tied."""
    if not ties:
        return None
    parent = list(range(size))

    def root(c: int) -> int:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    for tie in ties:
        for channel in tie[1:]:
            parent[root(channel)] = root(tie[0])
    _, units = torch.unique(torch.tensor([root(c) for c in range(size)]), return_inverse=True)
    return units


def check_units_fit_classes(units: Tensor, classes: Tensor | None) -> None:
    """Removing whole units keeps the classes equal when every unit has as many channels in each class."""
    if classes is None:
        return
    per_unit = torch.zeros(int(units.max()) + 1, int(classes.max()) + 1, dtype=torch.long)
    per_unit.index_put_((units, classes), torch.ones_like(units), accumulate=True)
    if (per_unit != per_unit[:, :1]).any():
        raise Unsupported("a grouped convolution reads these channels in parts that another layer splits differently")
