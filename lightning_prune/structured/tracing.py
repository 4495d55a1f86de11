"""Channel groups of convolutional, fully connected and attention networks, found by torch-pruning's DependencyGraph.

torch-pruning traces one forward pass and couples every layer that must shrink with a channel. This module turns
each of its groups into parameter slices (:class:`~lightning_prune.structured.groups.Member`) with the rules the
layers add (equal parts, bound units, cross-channel norms), or says why the group cannot be removed exactly.
"""

from collections.abc import Callable, Iterator, Sequence

import torch
import torch_pruning as tp
from torch import Tensor, nn

from lightning_prune.checkpoints import is_depthwise
from lightning_prune.inputs import Inputs, as_tuple
from lightning_prune.layers import CONV_LAYERS, RECURRENT_LAYERS, is_channel_layer, is_transposed_linear
from lightning_prune.structured.foreign import customized_pruners, foreign_handler
from lightning_prune.structured.groups import (
    ChannelGroup,
    Member,
    SkippedGroup,
    Unsupported,
    bind_units,
    check_units_fit_classes,
    combine_partitions,
    owner,
    parameter_names,
)
from lightning_prune.structured.reshapes import ReshapeGuard
from lightning_prune.structured.search import SearchLimit, bounded_search, mapped_once


class EvalMode:
    """Tracing runs a forward pass: in eval mode, so batch-norm statistics and dropout are left alone."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.modes = {module: module.training for module in self.model.modules()}
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for module, training in self.modes.items():
            module.training = training


class Trace:
    """A traced model: torch-pruning's graph, and the guard of the reshapes it cannot follow."""

    def __init__(self, graph: "tp.DependencyGraph", guard: ReshapeGuard) -> None:
        self.graph, self.guard = graph, guard


def forward_of(model: nn.Module, target: str) -> Callable[[nn.Module, tuple], object]:
    """How to run the forward target (a module's name, "" for the model itself) on positional inputs."""
    return lambda m, inputs: (m.get_submodule(target) if target else m)(*inputs)


def trace(model: nn.Module, example_input: Inputs, target: str = "") -> Trace:
    """torch-pruning's dependency graph of ``model`` run through ``target`` (recurrent layers left to our groups)."""
    recurrent = [m for m in model.modules() if isinstance(m, RECURRENT_LAYERS)]
    guard = ReshapeGuard()
    # torch-pruning traces through autograd: allow it even when called under no_grad / inference_mode, and see each
    # operation of a module the user compiled (a compiled graph is one autograd node)
    with EvalMode(model), torch.inference_mode(False), torch.enable_grad(), guard.recording(), guard.guarding(), \
            torch.compiler.set_stance("force_eager"):  # fmt: skip
        graph = tp.DependencyGraph().build_dependency(
            model,
            example_inputs=as_tuple(example_input),
            forward_fn=forward_of(model, target),
            ignored_layers=recurrent,
            customized_pruners=customized_pruners(model),
            verbose=False,
        )
    return Trace(graph, guard)


def layer_groups(
    model: nn.Module,
    traced: Trace,
    candidate: Callable[[list[str]], bool],
    classifier: str | None,
    not_roots: Sequence[str] = (),
) -> tuple[list[ChannelGroup], list[SkippedGroup]]:
    """The conv / linear / attention groups of a traced model for which ``candidate(producing parameter names)``
    holds, and those of them that cannot be removed exactly (with why). The classifier's output channels (the
    classes) are never a group, but its inputs shrink with the layer before it. The outputs of the layers in
    ``not_roots`` (attention projections, whose heads have groups of their own) are not searched."""
    modules = dict(model.named_modules())
    names = parameter_names(model)
    ignored = [m for m in model.modules() if isinstance(m, RECURRENT_LAYERS)]
    ignored += [modules[classifier]] if classifier else []
    module_names = {id(m): n for n, m in model.named_modules()}
    groups, skipped = [], []
    skip = ignored + [modules[n] for n in not_roots if n in modules]
    with traced.guard.guarding(), mapped_once(traced.graph):
        found = list(_all_groups(traced.graph, ignored, traced.guard, skip))
    for root, group, problem in found:
        name = module_names[id(root)]
        producing = _producing_parameters(group, names) if group is not None else [f"{name}.weight"]
        if not candidate(producing):
            continue
        builder = _GroupBuilder(name, len(group[0].idxs) if group is not None else 0, names, module_names)
        try:
            if problem is not None:
                raise Unsupported(problem)
            groups.append(builder.build(group))
        except Unsupported as reason:
            producers = builder.producers or list(dict.fromkeys(owner(p) or p for p in producing))
            skipped.append(SkippedGroup(name, producers, str(reason)))
    return groups, skipped


def _all_groups(
    graph: "tp.DependencyGraph", ignored: list[nn.Module], guard: ReshapeGuard, skip: list[nn.Module]
) -> Iterator[tuple[nn.Module, "tp.Group | None", str | None]]:
    """Every conv / linear layer's output-channel group (but those of ``skip``), once per group: (root, group,
    None), or with why it cannot be pruned where torch-pruning fails to follow the channels, its search does not
    end, or they reach a reshape it cannot follow (the group None if there is none), so that one failure leaves out
    one group, not all."""
    visited: set[int] = set()
    for module in list(graph.module2node):
        if module in skip or not is_channel_layer(module) or id(module) in visited:
            continue
        pruner = graph.get_pruner_of_module(module)
        guard.reached = False
        try:
            channels = list(range(pruner.get_out_channels(module)))
            with bounded_search():  # a search that does not end leaves out its group, not the fit
                group = graph.get_pruning_group(module, pruner.prune_out_channels, channels)
        except SearchLimit as limit:
            visited.add(id(module))
            yield module, None, str(limit)
            continue
        except Exception as error:  # torch-pruning's index mappings: this group is left out
            visited.add(id(module))
            yield module, None, f"torch-pruning cannot follow its channels ({error!r})"
            continue
        outputs = [item.dep.target.module for item in group if graph.is_out_channel_pruning_fn(item.dep.handler)]
        visited.update(id(m) for m in outputs)
        if any(m in ignored for m in outputs):  # the classifier's classes are never cut
            continue
        opaque = "its channels go through a reshape or concatenation torch-pruning cannot follow (a channel shuffle)"
        yield module, group, opaque if guard.reached else None


def _producing_parameters(group: "tp.Group", names: dict[int, str]) -> list[str]:
    """Names of the weights and unwrapped parameters whose output channels the group holds."""
    producing = []
    for item in group:
        module = item.dep.target.module
        if isinstance(module, nn.Parameter):
            producing.append(names[id(module)])
        elif _is_out(item) and (is_channel_layer(module) or isinstance(module, nn.MultiheadAttention)):
            producing += [names[id(p)] for n, p in module.named_parameters() if "weight" in n]
    return producing


def _is_out(item: "tp.GroupItem") -> bool:
    return item.dep.handler.__name__ == "prune_out_channels"


class _GroupBuilder:
    """Collects one torch-pruning group's slices and rules, layer by layer."""

    def __init__(self, name: str, size: int, names: dict[int, str], module_names: dict[int, str]) -> None:
        self.name, self.size, self.names, self.module_names = name, size, names, module_names
        self.members: list[Member] = []
        self.buffers: list[Member] = []
        self.norms: list[Member] = []
        self.partitions: list[Tensor] = []
        self.ties: list[list[int]] = []
        self.producers: list[str] = []

    def build(self, group: "tp.Group") -> ChannelGroup:
        for item in group:
            node = item.dep.target
            if node.type == tp.ops.OPTYPE.OUTPUT:
                raise Unsupported("its channels are part of the model's output")
            positions = torch.as_tensor(item.idxs, dtype=torch.long)
            channels = torch.as_tensor(item.root_idxs, dtype=torch.long)
            order = positions.argsort()
            self.add(node.module, positions[order], channels[order], _is_out(item), node.pruning_dim)
        classes = combine_partitions(self.size, self.partitions)
        units = bind_units(self.size, self.ties)
        if units is not None:
            check_units_fit_classes(units, classes)
            classes = None  # any set of whole units keeps the parts equal
        return ChannelGroup(
            self.name,
            self.size,
            self.members,
            modules=self.producers or [self.name],
            classes=classes,
            units=units,
            buffers=self.buffers,
            norms=self.norms,
        )

    def add(self, module: object, positions: Tensor, channels: Tensor, out: bool, dim: int) -> None:
        if isinstance(module, nn.Parameter):
            self.produced_by(self.names[id(module)])
            self.slice(module, dim, channels, positions, produces=True)
            return
        if not isinstance(module, nn.Module):
            return
        foreign = _linear if is_transposed_linear(module) else foreign_handler(module)
        if foreign is not None:
            foreign(self, module, positions, channels, out)
            return
        for kind, handler in _HANDLERS:
            if isinstance(module, kind):
                handler(self, module, positions, channels, out)
                return
        if any(True for _ in module.parameters(recurse=False)):
            raise Unsupported(f"{self.module_names.get(id(module), '?')} ({type(module).__name__}) reads them")
        # element-wise operations, reshapes, concatenations: nothing to slice

    # -- the pieces a layer contributes ---------------------------------------------------------------------------

    def slice(self, param: Tensor | None, dim: int, channels: Tensor, positions: Tensor, produces: bool) -> None:
        if param is None:
            return
        covers_all = len(positions) == param.shape[dim] and bool((positions == torch.arange(len(positions))).all())
        self.members.append(Member(self.names[id(param)], dim, channels, produces, None if covers_all else positions))

    def produced_by(self, module: nn.Module | str) -> None:
        name = module if isinstance(module, str) else self.module_names[id(module)]
        if name not in self.producers:
            self.producers.append(name)

    def partition(self, positions: Tensor, channels: Tensor, width: int, block: int, what: str) -> None:
        """The layer splits its ``width`` positions into parts of ``block``: each part must stay as wide as the
        others."""
        if len(positions) != width:
            raise Unsupported(f"{what} spans channels of several groups")
        part = torch.empty(self.size, dtype=torch.long)
        part[channels] = positions // block
        self.partitions.append(part)

    def module_name(self, module: nn.Module) -> str:
        return self.module_names[id(module)]

    def cross_channel_norm(self, norm: nn.Module, positions: Tensor, channels: Tensor) -> None:
        """A norm whose statistics span the channels: its affine slices, and the norm itself, to be told which
        channels are masked."""
        self.slice(norm.weight, 0, channels, positions, produces=True)
        self.slice(getattr(norm, "bias", None), 0, channels, positions, produces=True)
        self.norms.append(Member(self.module_name(norm), 0, channels, True, positions))


def _convolution(b: _GroupBuilder, conv: nn.modules.conv._ConvNd, positions: Tensor, channels: Tensor, out: bool):
    name = b.module_name(conv)
    if conv.transposed or not isinstance(conv, CONV_LAYERS):
        raise Unsupported(f"{name} is a transposed convolution")
    if is_depthwise(conv) or (conv.groups == 1 and out):
        b.produced_by(conv)
        b.slice(conv.weight, 0, channels, positions, produces=True)
        b.slice(conv.bias, 0, channels, positions, produces=True)
    elif conv.groups == 1:
        b.slice(conv.weight, 1, channels, positions, produces=False)
    elif conv.groups == conv.out_channels:
        raise Unsupported(f"{name} is a grouped convolution with a channel multiplier")
    elif out:
        b.produced_by(conv)
        b.slice(conv.weight, 0, channels, positions, produces=True)
        b.slice(conv.bias, 0, channels, positions, produces=True)
        b.partition(positions, channels, conv.out_channels, conv.out_channels // conv.groups, f"{name}'s groups")
    else:
        _grouped_inputs(b, conv, positions, channels)


def _grouped_inputs(b: _GroupBuilder, conv: nn.modules.conv._ConvNd, positions: Tensor, channels: Tensor) -> None:
    """A grouped convolution's input channel ``j`` of group ``q`` is column ``j`` of the rows of group ``q``: the
    column goes only when channel ``j`` of every group goes, so those channels are bound into one unit."""
    per_group = conv.in_channels // conv.groups
    if len(positions) != conv.in_channels:
        raise Unsupported(f"grouped convolution {b.module_name(conv)} reads channels of several groups")
    by_position = torch.empty(conv.in_channels, dtype=torch.long)
    by_position[positions] = channels
    b.ties += [by_position[column::per_group].tolist() for column in range(per_group)]
    b.slice(conv.weight, 1, by_position[:per_group], torch.arange(per_group), produces=False)


def _linear(b: _GroupBuilder, linear: nn.Module, positions: Tensor, channels: Tensor, out: bool) -> None:
    """A Linear's outputs are its weight's rows (and its bias), its inputs the columns; a transposed Linear's
    (GPT-2's Conv1D) the other way round."""
    rows, columns = (1, 0) if is_transposed_linear(linear) else (0, 1)
    if out:
        b.produced_by(linear)
        b.slice(linear.weight, rows, channels, positions, produces=True)
        b.slice(linear.bias, 0, channels, positions, produces=True)
    else:
        b.slice(linear.weight, columns, channels, positions, produces=False)


def _per_channel_norm(b: _GroupBuilder, norm: nn.Module, positions: Tensor, channels: Tensor, out: bool) -> None:
    """Batch / instance norm: per-channel statistics; the running ones are sliced with the channel."""
    b.slice(norm.weight, 0, channels, positions, produces=True)
    b.slice(norm.bias, 0, channels, positions, produces=True)
    for buffer in ("running_mean", "running_var"):
        if getattr(norm, buffer, None) is not None:
            b.buffers.append(Member(f"{b.module_name(norm)}.{buffer}", 0, channels, False, positions))


def _layer_norm(b: _GroupBuilder, norm: nn.LayerNorm, positions: Tensor, channels: Tensor, out: bool) -> None:
    if len(norm.normalized_shape) != 1:
        raise Unsupported(f"{b.module_name(norm)} normalises over several dimensions")
    b.cross_channel_norm(norm, positions, channels)


def _group_norm(b: _GroupBuilder, norm: nn.GroupNorm, positions: Tensor, channels: Tensor, out: bool) -> None:
    block = norm.num_channels // norm.num_groups
    b.partition(positions, channels, norm.num_channels, block, f"{b.module_name(norm)}'s groups")
    b.cross_channel_norm(norm, positions, channels)


def _attention(b: _GroupBuilder, attention: nn.MultiheadAttention, positions: Tensor, channels: Tensor, out: bool):
    """nn.MultiheadAttention is ``embed_dim`` wide in, inside and out: stream channel ``i`` goes with dimension
    ``i`` of the query, key and value projections. Every head must keep as many dimensions as the others."""
    name = b.module_name(attention)
    if not attention._qkv_same_embed_dim:
        raise Unsupported(f"{name} has keys or values of another width than its queries")
    width = attention.embed_dim
    b.partition(positions, channels, width, attention.head_dim, f"{name}'s heads")
    b.produced_by(attention)
    qkv = torch.cat([positions + offset * width for offset in range(3)])
    b.slice(attention.in_proj_weight, 0, channels.repeat(3), qkv, produces=True)
    b.slice(attention.in_proj_weight, 1, channels, positions, produces=False)
    b.slice(attention.in_proj_bias, 0, channels.repeat(3), qkv, produces=True)
    b.slice(attention.out_proj.weight, 0, channels, positions, produces=True)
    b.slice(attention.out_proj.weight, 1, channels, positions, produces=False)
    b.slice(attention.out_proj.bias, 0, channels, positions, produces=True)
    for extra in (attention.bias_k, attention.bias_v):
        b.slice(extra, 2, channels, positions, produces=True)


def _embedding(b: _GroupBuilder, embedding: nn.Embedding, positions: Tensor, channels: Tensor, out: bool) -> None:
    b.produced_by(embedding)
    b.slice(embedding.weight, 1, channels, positions, produces=True)


def _prelu(b: _GroupBuilder, prelu: nn.PReLU, positions: Tensor, channels: Tensor, out: bool) -> None:
    if prelu.num_parameters > 1:  # one slope per channel; PReLU(0) = 0, so the slope does not produce it
        b.slice(prelu.weight, 0, channels, positions, produces=False)


def _recurrent(b: _GroupBuilder, rnn: nn.Module, positions: Tensor, channels: Tensor, out: bool) -> None:
    raise Unsupported(f"recurrent layer {b.module_name(rnn)} reads them")


_HANDLERS: list[tuple[type | tuple[type, ...], Callable]] = [
    (nn.modules.conv._ConvNd, _convolution),
    (nn.Linear, _linear),
    ((nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm), _per_channel_norm),
    (nn.LayerNorm, _layer_norm),
    (nn.GroupNorm, _group_norm),
    (nn.MultiheadAttention, _attention),
    (nn.Embedding, _embedding),
    (nn.PReLU, _prelu),
    (nn.RNNBase, _recurrent),
]


def is_candidate_among(roots: Sequence[str], excluded: Sequence[str]) -> Callable[[list[str]], bool]:
    """A group is pruned when one of its producing weights is prunable (its layer is a root) and none is
    excluded."""
    roots_set, excluded_set = set(roots), set(excluded)

    def candidate(producing: list[str]) -> bool:
        return any(owner(p) in roots_set for p in producing) and not any(p in excluded_set for p in producing)

    return candidate
