"""Hidden-unit groups of recurrent layers (nn.LSTM, nn.GRU, nn.RNN; several layers, both directions): our own code,
torch-pruning cannot prune them.

Unit ``j`` of layer ``l`` in one direction is the gate rows ``j, H+j, ...`` (4 gates for an LSTM, 3 for a GRU, 1 for
an RNN) of that direction's ``weight_ih_l{l}``, ``weight_hh_l{l}`` and both biases, column ``j`` of its
``weight_hh_l{l}``, and the column that reads it in the next layer's ``weight_ih`` (both directions; the forward
direction's outputs come first, ``2H`` columns in all), or in the Linear reading the last layer's state.

A masked unit has zero gate pre-activations: an LSTM keeps ``c = h = 0``; a GRU's candidate is ``tanh(0) = 0`` and its
update gate halves the (zero) state, so ``h = 0`` too (from the default zero initial state). Removing it changes
nothing the network computes. All layers and directions share one hidden size, so their groups are tied: they lose
as many units each.
"""

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lightning_prune.structured.groups import ChannelGroup, Member, SkippedGroup, Unsupported

GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


def consumer_of(model: nn.Module, rnn: nn.RNNBase) -> tuple[str, nn.Linear] | None:
    """The first nn.Linear after ``rnn`` in module order as wide as its output (LSTMClassifier's ``fc``)."""
    width = rnn.hidden_size * (2 if rnn.bidirectional else 1)
    seen = False
    for name, module in model.named_modules():
        if module is rnn:
            seen = True
        elif seen and isinstance(module, nn.Linear) and module.in_features == width:
            return name, module
    return None


def gates_of(rnn: nn.RNNBase) -> int:
    """Rows per hidden unit in the weights: one per gate.

    Raises:
        Unsupported: An LSTM with projections, or a recurrent layer of another kind.
    """
    if getattr(rnn, "proj_size", 0):
        raise Unsupported("an nn.LSTM with projections (proj_size) is not supported")
    gates = next((count for kind, count in GATES.items() if isinstance(rnn, kind)), None)
    if gates is None:
        raise Unsupported(f"{type(rnn).__name__} is not nn.LSTM, nn.GRU or nn.RNN")
    return gates


def rnn_groups(
    model: nn.Module, roots: Sequence[str], names: Mapping[int, str], excluded: Sequence[str] = ()
) -> tuple[list[ChannelGroup], list[SkippedGroup]]:
    """One group per layer and direction of every recurrent module named in ``roots``; those that cannot be pruned
    are skipped (with why). A module with an excluded weight is left out whole: its groups are tied."""
    modules = dict(model.named_modules())
    groups, skipped = [], []
    for rnn_name in roots:
        rnn = modules.get(rnn_name)
        if not isinstance(rnn, nn.RNNBase):
            continue
        if any(names[id(p)] in set(excluded) for p in rnn.parameters()):
            continue
        try:
            groups += _groups_of(model, rnn_name, rnn, names)
        except Unsupported as reason:
            skipped.append(SkippedGroup(rnn_name, [rnn_name], str(reason)))
    return groups, skipped


def _groups_of(model: nn.Module, rnn_name: str, rnn: nn.RNNBase, names: Mapping[int, str]) -> list[ChannelGroup]:
    gates = gates_of(rnn)
    hidden = rnn.hidden_size
    units = torch.arange(hidden)
    directions = ["", "_reverse"] if rnn.bidirectional else [""]
    consumer = consumer_of(model, rnn)
    prefix = f"{rnn_name}." if rnn_name else ""
    groups = []
    for layer in range(rnn.num_layers):
        for direction, suffix in enumerate(directions):

            def param(kind: str, layer: int = layer, suffix: str = suffix) -> str | None:
                tensor = getattr(rnn, f"{kind}_l{layer}{suffix}", None)
                return None if tensor is None else names[id(tensor)]

            members = [
                Member(param(kind), 0, units.repeat(gates), produces=True)
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                if param(kind) is not None
            ]
            members.append(Member(param("weight_hh"), 1, units, produces=False))
            # the next layer (both its directions), or the Linear after the last one, reads [forward | reverse]
            reading = [param("weight_ih", layer + 1, s) for s in directions] if layer + 1 < rnn.num_layers else []
            if not reading and consumer is not None:
                reading = [names[id(consumer[1].weight)]]
            offset = torch.arange(hidden) + direction * hidden
            members += [Member(p, 1, units, produces=False, positions=offset) for p in reading]
            name = f"{prefix}l{layer}{suffix}"
            groups.append(ChannelGroup(name, hidden, members, tie=rnn_name, modules=[rnn_name]))
    return groups
