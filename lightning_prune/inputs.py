"""What a model is called with: the package's batch convention ``(*inputs, target)`` and example inputs.

Image batches are ``(x, y)``, text batches ``(tokens, lengths, y)``: the inputs go to ``model(*inputs)``. The pruning
callback keeps a few samples of the first batch as its example input (to trace channel groups, count FLOPs and
export); the comparison runner profiles on a test batch.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

Inputs = Tensor | tuple[Tensor, ...]


def split_batch(batch: Any) -> tuple[tuple[Tensor, ...], Tensor] | None:
    """``(inputs, target)`` of a ``(*inputs, target)`` batch of tensors; None when the batch has another form.

    Example:
        >>> x, y = torch.zeros(4, 3), torch.zeros(4)
        >>> inputs, target = split_batch((x, y))
        >>> len(inputs), target.shape
        (1, torch.Size([4]))
        >>> split_batch({"x": x}) is None
        True
    """
    if isinstance(batch, (list, tuple)) and len(batch) >= 2 and all(torch.is_tensor(t) for t in batch):
        return tuple(batch[:-1]), batch[-1]
    return None


def example_inputs(batch: Any, size: int = 2) -> Inputs | None:
    """The inputs of a ``(*inputs, target)`` batch, cut to ``size`` samples and detached (one tensor when there is
    one input); None when the batch has another form."""
    split = split_batch(batch)
    if split is None:
        return None
    inputs = tuple(t[:size].detach().clone() for t in split[0])
    return inputs if len(inputs) > 1 else inputs[0]


def candidate_inputs(batch: Any, module: nn.Module | None = None, size: int = 2) -> list[Inputs]:
    """What a model might be called with, most likely first: the module's ``example_input_array``, the inputs of a
    ``(*inputs, target)`` batch, the whole batch as positional arguments (a module whose forward takes the target
    too), or the batch itself. Each is cut to ``size`` samples and detached; forms that are not tensors are left out.
    """
    candidates: list[Inputs] = []
    declared = getattr(module, "example_input_array", None)
    if torch.is_tensor(declared) or (isinstance(declared, tuple) and all(torch.is_tensor(t) for t in declared)):
        candidates.append(declared)
    convention = example_inputs(batch, size)
    if convention is not None:
        candidates.append(convention)
    if isinstance(batch, (list, tuple)) and batch and all(torch.is_tensor(t) for t in batch):
        candidates.append(tuple(t[:size].detach().clone() for t in batch))
    elif torch.is_tensor(batch):
        candidates.append(batch[:size].detach().clone())
    return candidates


def as_tuple(inputs: Inputs) -> tuple[Tensor, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def to_device_of(module: nn.Module, inputs: Inputs) -> Inputs:
    """``inputs`` on the device of ``module``'s first parameter (unchanged for a module without parameters)."""
    reference = next(module.parameters(), None)
    if reference is None:
        return inputs
    moved = tuple(t.to(reference.device) for t in as_tuple(inputs))
    return moved if isinstance(inputs, tuple) else moved[0]


def call(model: nn.Module, inputs: Inputs) -> Any:
    return model(*as_tuple(inputs))


def within(target: str, name: str) -> bool:
    """Whether module ``name`` is ``target`` or inside it ("" is the whole model)."""
    return not target or name == target or name.startswith(f"{target}.")


def forward_targets(model: nn.Module, roots: Sequence[str]) -> list[str]:
    """Where the forward may be called, most likely first: the model; the modules holding every root, outermost
    first (a LightningModule's ``self.net``); each child holding some (most roots first)."""
    common = _common_ancestor(roots).split(".") if _common_ancestor(roots) else []
    targets = [""] + [".".join(common[: depth + 1]) for depth in range(len(common))]
    children = [name for name, _ in model.named_children() if any(within(name, r) for r in roots)]
    children.sort(key=lambda child: -sum(within(child, r) for r in roots))
    return targets + [c for c in children if c not in targets] if len(children) > 1 else targets


def _common_ancestor(roots: Sequence[str]) -> str:
    paths = [r.split(".") for r in roots]
    if not paths:
        return ""
    common = []
    for parts in zip(*paths, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    # a root itself is a layer: its parent holds it
    if any(len(p) == len(common) for p in paths):
        common = common[:-1]
    return ".".join(common)
