"""Structured pruning: channel / hidden-unit groups, physical shrinking during training, and compact export.

A *group* is everything that must shrink together when one channel goes: a convolution's output channel, its bias,
the batch-norm entry after it, the next layers' input channels, and every layer tied to it by a residual addition.
torch-pruning's DependencyGraph finds these groups for convolutional and fully connected networks. It cannot prune a
multi-layer ``nn.LSTM``, so LSTM hidden units have their own groups here: unit ``j`` of layer ``l`` is the four gate
rows ``j, H+j, 2H+j, 3H+j`` of ``weight_ih_l{l}``, ``weight_hh_l{l}`` and both biases, column ``j`` of
``weight_hh_l{l}`` and of the next layer's ``weight_ih`` (or of the classifier after the last layer).

A cut channel is first *masked*: every entry that produces it is zeroed, so its output is exactly zero (an LSTM unit
with zero gate pre-activations keeps ``c = h = 0``; a batch-norm with zero scale and shift outputs zero). Removing it
physically afterwards therefore changes nothing in what the network computes, only its size.
"""

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

Inputs = Tensor | tuple[Tensor, ...]


@dataclass
class Member:
    """One parameter slice that belongs to a group: ``param`` along ``dim``; ``channel[i]`` is the group channel
    that position ``i`` of that dimension belongs to (a flattened conv output feeds many fc inputs per channel)."""

    param: str
    dim: int
    channel: Tensor
    produces: bool  # True: the slice computes the channel (zero it and the channel is zero); False: it consumes it


@dataclass
class ChannelGroup:
    """Channels that are removed together, with the parameter slices that go with each."""

    name: str
    size: int
    members: list[Member] = field(default_factory=list)
    root: nn.Module | None = None  # torch-pruning's root layer (None for LSTM groups)
    # groups with the same tie lose the same number of channels (the layers of one nn.LSTM share a hidden size)
    tie: str | None = None


# -- finding groups ---------------------------------------------------------------------------------------------------


def _module_params(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its name in ``model``."""
    return {id(p): name for name, p in model.named_parameters()}


def _tp_members(group, names: dict[int, str]) -> list[Member]:
    """Translate a torch-pruning group into parameter slices."""
    members = []
    for item in group:
        dep, idxs = item.dep, item.idxs
        module = dep.target.module
        if not isinstance(module, nn.Module) or not any(True for _ in module.parameters(recurse=False)):
            continue  # element-wise ops, reshapes: nothing to slice
        handler = dep.handler.__name__
        channel = torch.as_tensor(item.root_idxs, dtype=torch.long)
        order = torch.as_tensor(idxs, dtype=torch.long).argsort()
        channel = channel[order]  # position i along the dimension belongs to root channel channel[i]
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups == 1 and not module.transposed:
            pass
        elif not isinstance(module, (nn.Linear, nn.modules.batchnorm._BatchNorm)):
            raise NotImplementedError(
                f"structured pruning handles Conv (groups=1), Linear, BatchNorm and LSTM layers; "
                f"{type(module).__name__} is coupled to a prunable channel"
            )
        if handler == "prune_out_channels":
            members.append(Member(names[id(module.weight)], 0, channel, produces=True))
            if getattr(module, "bias", None) is not None:
                members.append(Member(names[id(module.bias)], 0, channel, produces=True))
        elif handler == "prune_in_channels":
            members.append(Member(names[id(module.weight)], 1, channel, produces=False))
        else:
            raise NotImplementedError(f"unexpected torch-pruning handler {handler} on {type(module).__name__}")
    return members


def _lstm_consumer(model: nn.Module, lstm_name: str, lstm: nn.LSTM) -> tuple[str, nn.Linear] | None:
    """The first nn.Linear after the LSTM in module order reading its hidden state (LSTMClassifier's ``fc``)."""
    seen = False
    for name, module in model.named_modules():
        if module is lstm:
            seen = True
        elif seen and isinstance(module, nn.Linear) and module.in_features == lstm.hidden_size:
            return name, module
    return None


def _lstm_groups(model: nn.Module, names: dict[int, str]) -> list[ChannelGroup]:
    groups = []
    for lstm_name, lstm in model.named_modules():
        if not isinstance(lstm, nn.RNNBase):
            continue
        if not isinstance(lstm, nn.LSTM) or lstm.bidirectional or lstm.proj_size:
            raise NotImplementedError("structured pruning handles unidirectional nn.LSTM without projections")
        hidden = lstm.hidden_size
        units = torch.arange(hidden)
        gate_units = units.repeat(4)  # rows are [input | forget | cell | output] gates, H rows each
        consumer = _lstm_consumer(model, lstm_name, lstm)
        for layer in range(lstm.num_layers):
            members = [
                Member(names[id(getattr(lstm, f"{kind}_l{layer}"))], 0, gate_units, produces=True)
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                if getattr(lstm, f"{kind}_l{layer}", None) is not None
            ]
            members.append(Member(names[id(getattr(lstm, f"weight_hh_l{layer}"))], 1, units, produces=False))
            if layer + 1 < lstm.num_layers:
                members.append(Member(names[id(getattr(lstm, f"weight_ih_l{layer + 1}"))], 1, units, produces=False))
            elif consumer is not None:
                members.append(Member(names[id(consumer[1].weight)], 1, units, produces=False))
            prefix = f"{lstm_name}." if lstm_name else ""
            groups.append(ChannelGroup(f"{prefix}l{layer}", hidden, members, tie=lstm_name))
    return groups


def _eval_forward(model: nn.Module):
    """Tracing runs a forward pass: in eval mode, so batch-norm statistics and dropout are left alone."""

    class _Context:
        def __enter__(self):
            self.training = model.training
            model.eval()

        def __exit__(self, *exc):
            model.train(self.training)

    return _Context()


def find_groups(
    model: nn.Module, example_input: Inputs | None, roots: Sequence[str], classifier: str | None
) -> tuple[list[ChannelGroup], tp.DependencyGraph | None]:
    """The channel groups of ``model`` whose root layer is one of ``roots`` (module names).

    LSTM layers get their own groups; every other layer goes through torch-pruning's DependencyGraph, traced on
    ``example_input``. The classifier's output channels (the classes) are never a group.
    """
    names = _module_params(model)
    groups = [g for g in _lstm_groups(model, names) if g.name.rsplit(".l", 1)[0] in roots]
    modules = dict(model.named_modules())
    layer_roots = [
        modules[r] for r in roots if isinstance(modules.get(r), (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
    ]
    if not layer_roots:
        return groups, None
    if example_input is None:
        raise ValueError("structured pruning of convolutional / linear layers needs an example input to trace")
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    recurrent = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    # the classifier is traced (its inputs shrink with the layer before it) but never a root: its outputs are classes
    ignored = recurrent + ([modules[classifier]] if classifier else [])
    # torch-pruning traces through autograd: allow it even when called under no_grad / inference_mode
    with _eval_forward(model), torch.inference_mode(False), torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=inputs, forward_fn=lambda m, x: m(*x), ignored_layers=recurrent, verbose=False
        )
    root_ids = {id(m) for m in layer_roots}
    module_names = {id(m): n for n, m in model.named_modules()}
    for group in graph.get_all_groups(
        ignored_layers=ignored, root_module_types=(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    ):
        root = group[0].dep.target.module
        # a residual group has several convs; it is prunable when its root is
        if id(root) not in root_ids:
            continue
        size = len(group[0].idxs)
        groups.append(ChannelGroup(module_names[id(root)], size, _tp_members(group, names), root))
    return groups, graph


# -- scores and selection ----------------------------------------------------------------------------------------


def _per_channel(group: ChannelGroup, per_position: Callable[[Member], Tensor | None]) -> Tensor:
    """Sum a per-position quantity of every member into the group's channels."""
    total = torch.zeros(group.size, dtype=torch.float64)
    for member in group.members:
        values = per_position(member)
        if values is not None:
            total.index_add_(0, member.channel, values.double().cpu())
    return total


def channel_scores(group: ChannelGroup, saliency: Mapping[str, Tensor]) -> Tensor:
    """A group's channel saliency: the sum of its members' saliency over each channel's slices."""

    def per_position(member: Member) -> Tensor | None:
        values = saliency.get(member.param)
        if values is None:
            return None
        return values.detach().abs().transpose(0, member.dim).reshape(values.shape[member.dim], -1).sum(1)

    return _per_channel(group, per_position)


def channel_cost(group: ChannelGroup, weights: Mapping[str, Tensor]) -> Tensor:
    """How many prunable-weight entries each channel of the group holds (what removing it saves)."""

    def per_position(member: Member) -> Tensor | None:
        weight = weights.get(member.param)
        if weight is None:
            return None
        return torch.full((weight.shape[member.dim],), float(weight.numel() // weight.shape[member.dim]))

    return _per_channel(group, per_position)


def removed_channels(group: ChannelGroup, pruned: Mapping[str, Tensor]) -> Tensor:
    """Boolean per channel: every producing slice of it is masked."""
    gone = torch.ones(group.size, dtype=torch.bool)
    any_producer = False
    for member in group.members:
        if not member.produces or member.param not in pruned:
            continue
        any_producer = True
        mask = pruned[member.param]
        per_position = mask.transpose(0, member.dim).reshape(mask.shape[member.dim], -1).all(1).cpu()
        channel_done = torch.ones(group.size, dtype=torch.int32)
        channel_done.scatter_reduce_(0, member.channel, per_position.int(), "amin")
        gone &= channel_done.bool()
    return gone if any_producer else torch.zeros(group.size, dtype=torch.bool)


def select_channels(
    groups: Sequence[ChannelGroup],
    scores: Sequence[Tensor],
    costs: Sequence[Tensor],
    gone: Sequence[Tensor],
    budget: float,
    min_layer_density: float,
    normalize_per_layer: bool = True,
) -> dict[str, Tensor]:
    """Channels to cut, cheapest first: the lowest saliency per weight saved (a greedy knapsack), until their
    weights fill ``budget``.

    Saliency is normalised per group (each group's mean is 1, unless ``normalize_per_layer`` is False) so layers of
    different scale compete fairly, and divided by the channel's share of weights: a channel that frees many weights
    for little saliency goes first, one that frees few (an input convolution's filter) is protected. Every group
    keeps at least ``max(1, ceil(min_layer_density * size))`` channels. Tied groups (the layers of one nn.LSTM, which
    share one hidden size) lose channels together, the r-th cheapest of each at once, so the removal really shrinks
    them.
    """
    mean_cost = float(torch.cat(list(costs)).mean()) if costs else 1.0
    ranked: dict[int, list[tuple[float, int, float]]] = {}
    for index, (group, score, cost, removed) in enumerate(zip(groups, scores, costs, gone, strict=True)):
        alive = (~removed).nonzero().squeeze(1)
        removable = len(alive) - max(1, math.ceil(min_layer_density * group.size))
        if removable <= 0:
            continue
        alive_scores = score[alive]
        scale = alive_scores.mean() if normalize_per_layer else 1.0
        normalised = alive_scores / scale if scale > 0 else torch.zeros_like(alive_scores)
        per_weight = normalised / (cost[alive] / mean_cost).clamp(min=1e-12)
        order = per_weight.argsort()[:removable]
        ranked[index] = [(float(per_weight[i]), int(alive[i]), float(cost[alive[i]])) for i in order]
    # a candidate is one channel, or, for tied groups, the r-th cheapest channel of each of them together
    candidates: list[tuple[float, float, list[tuple[int, int]]]] = []
    ties: dict[str, list[int]] = {}
    for index in ranked:
        tie = groups[index].tie
        if tie is None:
            candidates += [(key, cost, [(index, channel)]) for key, channel, cost in ranked[index]]
        else:
            ties.setdefault(tie, []).append(index)
    for members in ties.values():
        if len(members) < sum(1 for g in groups if g.tie == groups[members[0]].tie):
            continue  # a tied group that can lose nothing holds the others back
        for rank in range(min(len(ranked[i]) for i in members)):
            picks = [ranked[i][rank] for i in members]
            key = sum(p[0] for p in picks) / len(picks)
            candidates.append((key, sum(p[2] for p in picks), [(i, p[1]) for i, p in zip(members, picks, strict=True)]))
    candidates.sort(key=lambda c: c[0])
    chosen: dict[str, list[int]] = {}
    spent = 0.0
    for _, cost, picks in candidates:
        # a first channel larger than the budget is still taken (up to twice the budget) rather than never pruning
        if spent + cost > budget and not (spent == 0 and cost <= 2 * budget):
            continue
        spent += cost
        for index, channel in picks:
            chosen.setdefault(groups[index].name, []).append(channel)
    return {name: torch.tensor(sorted(chs), dtype=torch.long) for name, chs in chosen.items()}


def channel_elements(group: ChannelGroup, channels: Tensor, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Flat element indices, per parameter, of the slices that belong to ``channels``."""
    chosen = torch.zeros(group.size, dtype=torch.bool)
    chosen[channels] = True
    elements = {}
    for member in group.members:
        positions = chosen[member.channel].nonzero().squeeze(1)
        if positions.numel() == 0:
            continue
        param = params[member.param]
        mask = torch.zeros(param.shape, dtype=torch.bool)
        mask.index_fill_(member.dim, positions, True)
        flat = mask.view(-1).nonzero().squeeze(1).to(param.device)
        if member.param in elements:
            flat = torch.unique(torch.cat([elements[member.param], flat]))
        elements[member.param] = flat
    return elements


# -- physical removal -------------------------------------------------------------------------------------------------

# parameter name -> list of (dim, kept positions): how to slice anything shaped like that parameter
Slices = dict[str, list[tuple[int, Tensor]]]


def remove_channels(
    model: nn.Module, groups: Sequence[ChannelGroup], remove: Mapping[str, Tensor], graph: tp.DependencyGraph | None
) -> Slices:
    """Physically remove channels. Returns, per changed parameter (by its name before removal), the kept positions
    along each sliced dimension, to slice optimizer state and other per-weight buffers the same way."""
    by_name = {g.name: g for g in groups}
    names = _module_params(model)
    slices: Slices = {}
    lstm_plan: dict[nn.LSTM, dict[int, Tensor]] = {}
    for name, channels in remove.items():
        group = by_name[name]
        if channels.numel() == 0:
            continue
        if group.root is None:
            lstm_name, layer = name.rsplit(".l", 1) if "." in name else ("", name[1:])
            lstm = dict(model.named_modules())[lstm_name]
            lstm_plan.setdefault(lstm, {})[int(layer)] = channels
            continue
        for member in group.members:
            kept = (~torch.isin(member.channel, channels)).nonzero().squeeze(1)
            slices.setdefault(member.param, []).append((member.dim, kept))
        pruner = graph.get_pruner_of_module(group.root)
        graph.get_pruning_group(group.root, pruner.prune_out_channels, channels.tolist()).prune(record_history=False)
    for lstm, per_layer in lstm_plan.items():
        for param, dims in _shrink_lstm(model, lstm, per_layer, names).items():
            slices.setdefault(param, []).extend(dims)
    # parameters dropped and recreated keep their names: the slices are keyed by name
    return {name: _merge(dims) for name, dims in slices.items()}


def _merge(dims: list[tuple[int, Tensor]]) -> list[tuple[int, Tensor]]:
    """Several groups may slice one parameter along the same dim (never the same positions): intersect them."""
    merged: dict[int, Tensor] = {}
    for dim, kept in dims:
        merged[dim] = kept if dim not in merged else merged[dim][torch.isin(merged[dim], kept)]
    return sorted(merged.items())


def _shrink_lstm(model: nn.Module, lstm: nn.LSTM, remove: Mapping[int, Tensor], names: dict[int, str]) -> Slices:
    """Remove hidden units per layer. nn.LSTM has one hidden size for all layers: every layer keeps as many units as
    the layer that keeps most; a layer that lost more keeps some of its removed (masked, so exactly zero) units."""
    hidden = lstm.hidden_size
    keep_count = max(hidden - len(remove.get(layer, ())) for layer in range(lstm.num_layers))
    keep = []
    for layer in range(lstm.num_layers):
        dropped = remove.get(layer, torch.empty(0, dtype=torch.long)).tolist()
        alive = [u for u in range(hidden) if u not in set(dropped)]
        keep.append(torch.tensor(sorted(alive + dropped[: keep_count - len(alive)]), dtype=torch.long))
    consumer = _lstm_consumer(model, "", lstm)
    slices: Slices = {}

    def cut(module: nn.Module, attr: str, dims: list[tuple[int, Tensor]]) -> None:
        param = getattr(module, attr)
        slices[names[id(param)]] = dims
        setattr(module, attr, nn.Parameter(slice_like(param.detach(), dims), requires_grad=param.requires_grad))

    for layer, units in enumerate(keep):
        rows = torch.cat([units + gate * hidden for gate in range(4)])
        cut(lstm, f"weight_ih_l{layer}", [(0, rows)] + ([(1, keep[layer - 1])] if layer > 0 else []))
        cut(lstm, f"weight_hh_l{layer}", [(0, rows), (1, units)])
        for kind in ("bias_ih", "bias_hh"):
            if getattr(lstm, f"{kind}_l{layer}", None) is not None:
                cut(lstm, f"{kind}_l{layer}", [(0, rows)])
    lstm.hidden_size = keep_count
    if consumer is not None:
        cut(consumer[1], "weight", [(1, keep[-1])])
        consumer[1].in_features = keep_count
    lstm._init_flat_weights()
    return slices


def slice_like(tensor: Tensor, dims: Sequence[tuple[int, Tensor]]) -> Tensor:
    """Apply a parameter's slices to a tensor of its (old) shape: optimizer moments, saliency, masks."""
    for dim, kept in dims:
        tensor = tensor.index_select(dim, kept.to(tensor.device))
    return tensor.contiguous()


# -- architecture from a checkpoint -----------------------------------------------------------------------------------


def match_architecture(model: nn.Module, state_dict: Mapping[str, Tensor], prefix: str = "") -> list[str]:
    """Resize Conv/Linear/BatchNorm/LSTM layers so ``state_dict`` (from a shrunk model) loads into ``model``.

    Only shapes change; the values come from the state dict when it is loaded. Returns the resized layers' names.

    Example:
        >>> big, small = nn.Linear(8, 4), nn.Linear(8, 2)
        >>> match_architecture(big, small.state_dict())
        ['']
        >>> big.load_state_dict(small.state_dict()); big.out_features
        <All keys matched successfully>
        2
    """
    resized = []
    for name, module in model.named_modules():
        key = f"{prefix}{name}." if name else prefix
        if isinstance(module, nn.LSTM):
            changed = _resize_lstm(module, state_dict, key)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            changed = _resize_layer(module, state_dict, key)
        else:
            continue
        if changed:
            resized.append(name)
    return resized


def _replace(module: nn.Module, attr: str, shape: torch.Size) -> None:
    old = getattr(module, attr)
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        setattr(module, attr, new)


def _resize_layer(module: nn.Module, state_dict: Mapping[str, Tensor], key: str) -> bool:
    weight = state_dict.get(f"{key}weight")
    if weight is None or weight.shape == module.weight.shape:
        return False
    for attr in ("weight", "bias", "running_mean", "running_var"):
        saved = state_dict.get(f"{key}{attr}")
        if saved is not None and getattr(module, attr, None) is not None:
            _replace(module, attr, saved.shape)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = weight.shape[0]
    else:
        module.out_channels, module.in_channels = weight.shape[0], weight.shape[1] * module.groups
    return True


def _resize_lstm(lstm: nn.LSTM, state_dict: Mapping[str, Tensor], key: str) -> bool:
    saved_hh = state_dict.get(f"{key}weight_hh_l0")
    if saved_hh is None or saved_hh.shape == lstm.weight_hh_l0.shape:
        return False
    for param_name in lstm._flat_weights_names:
        saved = state_dict.get(f"{key}{param_name}")
        if saved is not None:
            _replace(lstm, param_name, saved.shape)
    lstm.hidden_size = saved_hh.shape[1]
    lstm._init_flat_weights()
    return True


# -- export -------------------------------------------------------------------------------------------------------


def compact_copy(model: nn.Module, example_input: Inputs | None, roots: Sequence[str] | None = None) -> nn.Module:
    """A dense copy of ``model`` without the channels that compute exactly zero (the original is untouched).

    A channel goes when every slice that produces it is zero: its weights' rows, its bias, its batch-norm scale and
    shift. Such a channel outputs zero, so removing it changes no output.
    """
    compact = copy.deepcopy(model)
    if roots is None:
        roots = default_roots(compact)
    classifier = last_linear(compact)
    groups, graph = find_groups(compact, example_input, roots, classifier)
    params = dict(compact.named_parameters())
    zero = {name: (p == 0) for name, p in params.items()}
    remove = {}
    for group in groups:
        gone = removed_channels(group, zero)
        if gone.all():
            gone[0] = False  # a layer keeps at least one channel
        if gone.any():
            remove[group.name] = gone.nonzero().squeeze(1)
    if remove:
        remove_channels(compact, groups, remove, graph)
    return compact


def last_linear(model: nn.Module) -> str | None:
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def default_roots(model: nn.Module) -> list[str]:
    """Module names whose output channels may be pruned: Conv/Linear (but the classifier) and LSTM layers."""
    classifier = last_linear(model)
    return [
        name
        for name, m in model.named_modules()
        if (isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and name != classifier)
        or isinstance(m, nn.LSTM)
    ]


def count_weights(model_params: Mapping[str, Tensor], names: Sequence[str]) -> int:
    return sum(int(model_params[n].count_nonzero()) for n in names if n in model_params)


def as_inputs(batch: Any, size: int = 2) -> Inputs | None:
    """The inputs of a ``(*inputs, target)`` batch, cut to ``size`` samples; None when the batch has another form."""
    if isinstance(batch, (list, tuple)) and len(batch) >= 2 and all(torch.is_tensor(t) for t in batch):
        inputs = tuple(t[:size].detach().clone() for t in batch[:-1])
        return inputs if len(inputs) > 1 else inputs[0]
    return None
