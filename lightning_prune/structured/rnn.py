"""Hidden-unit groups of recurrent layers, and removing units. torch-pruning cannot prune a multi-layer nn.LSTM.

Unit ``j`` of layer ``l`` is the four gate rows ``j, H+j, 2H+j, 3H+j`` of ``weight_ih_l{l}``, ``weight_hh_l{l}`` and
both biases, column ``j`` of ``weight_hh_l{l}`` and of the next layer's ``weight_ih`` (or of the Linear reading the
last layer's state). A masked unit has zero gate pre-activations, so it keeps ``c = h = 0`` and removing it changes
nothing the network computes.
"""

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_prune.optim import Slices, slice_like
from lightning_prune.structured.groups import ChannelGroup, Member

GATES = 4  # LSTM rows are [input | forget | cell | output] gates, H rows each


def consumer_of(model: nn.Module, rnn: nn.RNNBase) -> tuple[str, nn.Linear] | None:
    """The first nn.Linear after ``rnn`` in module order reading its hidden state (LSTMClassifier's ``fc``)."""
    seen = False
    for name, module in model.named_modules():
        if module is rnn:
            seen = True
        elif seen and isinstance(module, nn.Linear) and module.in_features == rnn.hidden_size:
            return name, module
    return None


def check_supported(rnn: nn.RNNBase) -> None:
    if not isinstance(rnn, nn.LSTM) or rnn.bidirectional or rnn.proj_size:
        raise NotImplementedError("structured pruning handles unidirectional nn.LSTM without projections")


def rnn_groups(model: nn.Module, roots: Sequence[str], names: Mapping[int, str]) -> list[ChannelGroup]:
    """One group per layer of every recurrent module named in ``roots``."""
    modules = dict(model.named_modules())
    groups = []
    for rnn_name in roots:
        rnn = modules.get(rnn_name)
        if not isinstance(rnn, nn.RNNBase):
            continue
        check_supported(rnn)
        hidden = rnn.hidden_size
        units = torch.arange(hidden)
        gate_units = units.repeat(GATES)
        consumer = consumer_of(model, rnn)
        for layer in range(rnn.num_layers):
            members = [
                Member(names[id(getattr(rnn, f"{kind}_l{layer}"))], 0, gate_units, produces=True)
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                if getattr(rnn, f"{kind}_l{layer}", None) is not None
            ]
            members.append(Member(names[id(getattr(rnn, f"weight_hh_l{layer}"))], 1, units, produces=False))
            if layer + 1 < rnn.num_layers:
                members.append(Member(names[id(getattr(rnn, f"weight_ih_l{layer + 1}"))], 1, units, produces=False))
            elif consumer is not None:
                members.append(Member(names[id(consumer[1].weight)], 1, units, produces=False))
            prefix = f"{rnn_name}." if rnn_name else ""
            group = ChannelGroup(f"{prefix}l{layer}", hidden, members, tie=rnn_name, module=rnn_name, layer=layer)
            groups.append(group)
    return groups


def shrink_rnn(model: nn.Module, rnn: nn.LSTM, remove: Mapping[int, Tensor], names: Mapping[int, str]) -> Slices:
    """Remove hidden units per layer. nn.LSTM has one hidden size for all layers: every layer keeps as many units as
    the layer that keeps most; a layer that lost more keeps some of its removed (masked, so exactly zero) units."""
    hidden = rnn.hidden_size
    keep_count = max(hidden - len(remove.get(layer, ())) for layer in range(rnn.num_layers))
    keep = []
    for layer in range(rnn.num_layers):
        dropped = remove.get(layer, torch.empty(0, dtype=torch.long)).tolist()
        alive = [u for u in range(hidden) if u not in set(dropped)]
        keep.append(torch.tensor(sorted(alive + dropped[: keep_count - len(alive)]), dtype=torch.long))
    consumer = consumer_of(model, rnn)
    slices: Slices = {}

    def cut(module: nn.Module, attr: str, dims: list[tuple[int, Tensor]]) -> None:
        param = getattr(module, attr)
        slices[names[id(param)]] = dims
        setattr(module, attr, nn.Parameter(slice_like(param.detach(), dims), requires_grad=param.requires_grad))

    for layer, units in enumerate(keep):
        rows = torch.cat([units + gate * hidden for gate in range(GATES)])
        cut(rnn, f"weight_ih_l{layer}", [(0, rows)] + ([(1, keep[layer - 1])] if layer > 0 else []))
        cut(rnn, f"weight_hh_l{layer}", [(0, rows), (1, units)])
        for kind in ("bias_ih", "bias_hh"):
            if getattr(rnn, f"{kind}_l{layer}", None) is not None:
                cut(rnn, f"{kind}_l{layer}", [(0, rows)])
    rnn.hidden_size = keep_count
    if consumer is not None:
        cut(consumer[1], "weight", [(1, keep[-1])])
        consumer[1].in_features = keep_count
    rnn._init_flat_weights()
    return slices
