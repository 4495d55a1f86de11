"""Optimizer state by parameter: zero the entries of cut weights, and carry the state over a physical shrink.

Adam's moments would pull a cut weight back, so its entries are zeroed at the cut. After a shrink the parameters are
new tensors, so the state is saved by parameter *name*, the optimizers are rebuilt through the strategy (otherwise
they keep updating the old tensors), and each survivor's state is sliced like its parameter, not reset.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

# parameter name -> list of (dim, kept positions): how to slice anything shaped like that parameter
Slices = dict[str, list[tuple[int, Tensor]]]


def slice_like(tensor: Tensor, dims: Sequence[tuple[int, Tensor]]) -> Tensor:
    """Apply a parameter's slices to a tensor of its (old) shape: optimizer moments, saliency, masks."""
    for dim, kept in dims:
        tensor = tensor.index_select(dim, kept.to(tensor.device))
    return tensor.contiguous()


def per_weight_state(
    optimizers: Iterable[torch.optim.Optimizer], params: Iterable[Tensor]
) -> list[tuple[Tensor, Tensor]]:
    """(parameter, state tensor) for each of the optimizers' state tensors shaped like its parameter (e.g. Adam's two
    moments of each)."""
    params = list(params)
    return [(param, value) for optimizer in optimizers for param in params
            for value in optimizer.state.get(param, {}).values()
            if torch.is_tensor(value) and value.shape == param.shape]  # fmt: skip


@torch.no_grad()
def zero_state_entries(optimizers: Iterable[torch.optim.Optimizer], entries: Mapping[Tensor, Tensor]) -> None:
    """Zero the per-weight state (e.g. Adam's moments) at the flat ``entries[param]`` of each parameter."""
    for param, value in per_weight_state(optimizers, entries):
        value.view(-1)[entries[param].to(value.device)] = 0


@dataclass
class SavedOptimizers:
    """Each optimizer's per-parameter state keyed by parameter name, its groups' hyperparameters, and the
    schedulers' states: what survives replacing the parameter objects."""

    states: list[dict[str, dict[str, Any]]]
    hyperparameters: list[list[dict[str, Any]]]
    schedulers: list[dict[str, Any]]


def save_optimizers(trainer: Any, module: nn.Module) -> SavedOptimizers:
    names = {id(p): n for n, p in module.named_parameters()}
    states, hyperparameters = [], []
    for optimizer in trainer.optimizers:
        states.append({names[id(p)]: dict(s) for p, s in optimizer.state.items() if id(p) in names})
        hyperparameters.append([{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups])
    schedulers = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]
    return SavedOptimizers(states, hyperparameters, schedulers)


def rebuild_optimizers(trainer: Any, module: nn.Module, saved: SavedOptimizers, slices: Slices) -> None:
    """New optimizers over the shrunk parameters, keeping the survivors' state (Adam's moments sliced, not reset)."""
    trainer.strategy.setup_optimizers(trainer)
    params = dict(module.named_parameters())
    for optimizer, state, hyper in zip(trainer.optimizers, saved.states, saved.hyperparameters, strict=False):
        for group, values in zip(optimizer.param_groups, hyper, strict=False):
            group.update(values)
        for name, entries in state.items():
            if name not in params:
                continue
            optimizer.state[params[name]] = {
                key: slice_like(value, slices.get(name, [])) if torch.is_tensor(value) and value.dim() > 0 else value
                for key, value in entries.items()
            }
    for config, scheduler_state in zip(trainer.lr_scheduler_configs, saved.schedulers, strict=False):
        config.scheduler.load_state_dict(scheduler_state)
