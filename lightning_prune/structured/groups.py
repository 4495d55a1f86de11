"""Channel groups: everything that must shrink together when one channel goes.

A group holds a convolution's output channel, its bias, the batch-norm entry after it, the next layers' input
channels, and every layer tied to it by a residual addition. torch-pruning's DependencyGraph finds these groups for
convolutional and fully connected networks; recurrent hidden units have their own groups (``rnn.py``).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import Tensor, nn

from lightning_prune.inputs import Inputs, as_tuple
from lightning_prune.layers import CONV_LAYERS, RECURRENT_LAYERS, WEIGHTED_LAYERS


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
    """Channels that are removed together, with the parameter slices that go with each.

    ``module`` is the name of the layer whose output channels these are (for a recurrent group, the RNN module, with
    ``layer`` its layer index); ``root`` is torch-pruning's root layer (None for recurrent groups).
    """

    name: str
    size: int
    members: list[Member] = field(default_factory=list)
    root: nn.Module | None = None
    # groups with the same tie lose the same number of channels (the layers of one nn.LSTM share a hidden size)
    tie: str | None = None
    module: str = ""
    layer: int | None = None


def parameter_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its name in ``model``."""
    return {id(p): name for name, p in model.named_parameters()}


def _tp_members(group: "tp.Group", names: dict[int, str]) -> list[Member]:
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
        if isinstance(module, CONV_LAYERS) and module.groups == 1 and not module.transposed:
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


class _EvalMode:
    """Tracing runs a forward pass: in eval mode, so batch-norm statistics and dropout are left alone."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.modes = {module: module.training for module in self.model.modules()}
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for module, training in self.modes.items():
            module.training = training


def trace(model: nn.Module, example_input: Inputs) -> "tp.DependencyGraph":
    """torch-pruning's dependency graph of ``model`` (recurrent layers left to our own groups)."""
    recurrent = [m for m in model.modules() if isinstance(m, RECURRENT_LAYERS)]
    # torch-pruning traces through autograd: allow it even when called under no_grad / inference_mode
    with _EvalMode(model), torch.inference_mode(False), torch.enable_grad():
        return tp.DependencyGraph().build_dependency(
            model,
            example_inputs=as_tuple(example_input),
            forward_fn=lambda m, x: m(*x),
            ignored_layers=recurrent,
            verbose=False,
        )


def layer_groups(
    model: nn.Module, graph: "tp.DependencyGraph", roots: Sequence[str], classifier: str | None
) -> list[ChannelGroup]:
    """The conv / linear groups of a traced model whose root layer is one of ``roots`` (module names); the
    classifier's output channels (the classes) are never a group, but its inputs shrink with the layer before it."""
    modules = dict(model.named_modules())
    names = parameter_names(model)
    root_ids = {id(modules[r]) for r in roots if isinstance(modules.get(r), WEIGHTED_LAYERS)}
    ignored = [m for m in model.modules() if isinstance(m, RECURRENT_LAYERS)]
    ignored += [modules[classifier]] if classifier else []
    module_names = {id(m): n for n, m in model.named_modules()}
    groups = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=WEIGHTED_LAYERS):
        root = group[0].dep.target.module
        # a residual group has several convs; it is prunable when its root is
        if id(root) not in root_ids:
            continue
        name = module_names[id(root)]
        groups.append(ChannelGroup(name, len(group[0].idxs), _tp_members(group, names), root, module=name))
    return groups
