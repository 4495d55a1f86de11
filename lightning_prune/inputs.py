"""What a model is called with: the package's batch convention ``(*inputs, target)`` and example inputs.

Image batches are ``(x, y)``, text batches ``(tokens, lengths, y)``: the inputs go to ``model(*inputs)``. The pruning
callback keeps a few samples of the first batch as its example input (to trace channel groups, count FLOPs and
export); the comparison runner profiles on a test batch.
"""

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
