"""Checking by doing that removing a group's masked channels changes nothing the network computes.

The tracing knows the layers; it cannot see a fixed tensor added to the channels (a positional-encoding buffer), a
width a module's forward reads from a plain attribute, or a reshape that reorders channels (a channel shuffle). So on
a copy of the model, a few channels of every group are masked, the masked output is taken, the channels are removed,
and the outputs are compared. Groups whose removal fails or changes the output are left out.
"""

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune.inputs import Inputs, as_tuple
from lightning_prune.structured.groups import ChannelGroup, SkippedGroup
from lightning_prune.structured.masking import mask_channels
from lightning_prune.structured.norms import remove_norm_hook
from lightning_prune.structured.shrink import remove_channels

# outputs of the masked and the compact model may differ by float rounding only
RELATIVE_TOLERANCE = 1e-4


def run(model: nn.Module, target: str, inputs: Inputs) -> Any:
    """The forward target (a module's name, "" for ``model``) called on ``inputs``, eagerly: a module the user
    compiled (``torch.compile``) runs its operations one by one here, so a check sees them and no trial's shapes
    recompile it."""
    with torch.compiler.set_stance("force_eager"):
        return (model.get_submodule(target) if target else model)(*as_tuple(inputs))


def model_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``. A tensor a module keeps from its own forward (timm's EfficientViT caches its
    attention biases, graph and all) is copied detached: ``deepcopy`` refuses a tensor inside a graph, and a copy
    needs none."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for value in _kept_from_forward(vars(module).values()):
            memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def _kept_from_forward(values: Any) -> list[Tensor]:
    """The non-leaf tensors among ``values``, looking one level into dicts, lists and tuples."""
    found = []
    for value in values:
        inner = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else [value]
        found += [t for t in inner if isinstance(t, Tensor) and not t.is_leaf]
    return found


def trial_channels(group: ChannelGroup) -> Tensor | None:
    """One unit of every class (None when some class has only one unit, so the group can lose nothing)."""
    units, classes = group.unit_of(), group.class_of()
    picks = []
    for c in range(int(classes.max()) + 1):
        in_class = torch.unique(units[classes == c])
        if len(in_class) < 2:
            return None
        picks.append(in_class[len(in_class) // 2])
    return torch.isin(units, torch.stack(picks)).nonzero().squeeze(1)


def verify_groups(model: nn.Module, target: str, example: Inputs, groups: Sequence[ChannelGroup]) -> list[SkippedGroup]:
    """The groups whose removal does not reproduce the masked model, with why. All groups are tried together
    first; only if that fails, each group (tied groups together) on its own."""
    if _mismatch(model, target, example, groups) is None:
        return []
    failed = []
    for cluster in _clusters(groups):
        reason = _mismatch(model, target, example, cluster)
        if reason is not None:
            failed += [SkippedGroup(g.name, g.modules, reason) for g in cluster]
    return failed


def _clusters(groups: Sequence[ChannelGroup]) -> list[list[ChannelGroup]]:
    """Groups tried on their own: each alone, tied groups together (they only shrink together)."""
    clusters: dict[str, list[ChannelGroup]] = {}
    for group in groups:
        clusters.setdefault(group.tie or f"\0{group.name}", []).append(group)
    return list(clusters.values())


def _mismatch(model: nn.Module, target: str, example: Inputs, groups: Sequence[ChannelGroup]) -> str | None:
    chosen = {g.name: c for g in groups if (c := trial_channels(g)) is not None}
    if not chosen:
        return None
    trial = model_copy(model).eval()
    _wake_zero_parameters(trial)
    for module in trial.modules():  # channels masked before are plain zeros here: the trial's own masks balance
        remove_norm_hook(module)
    try:
        with torch.no_grad():
            mask_channels(trial, groups, chosen)
            masked = run(trial, target, example)
            remove_channels(trial, groups, chosen)
            compact = run(trial, target, example)
    except Exception as error:  # whatever the removal breaks, the group is left out, with the error's first line
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        return f"the network fails once its channels are removed ({type(error).__name__}: {first_line})"
    return _difference(masked, compact)


@torch.no_grad()
def _wake_zero_parameters(model: nn.Module) -> None:
    """A layer initialised to zero (ViT's classifier, a residual branch's last norm) would hide every difference
    behind it: give such parameters small random values on the copy. Exactness is a matter of structure, not of
    values."""
    generator = torch.Generator().manual_seed(0)
    for param in model.parameters():
        if param.numel() and not param.any():
            param.copy_(0.1 * torch.randn(param.shape, generator=generator).to(param))


def _difference(masked: Any, compact: Any) -> str | None:
    """Why two outputs are not the same up to rounding (None when they are)."""
    left, right = _tensors(masked), _tensors(compact)
    if len(left) != len(right) or any(a.shape != b.shape for a, b in zip(left, right, strict=True)):
        return "removing its channels changes the shape of the output"
    for a, b in zip(left, right, strict=True):
        if not a.is_floating_point():
            if not torch.equal(a, b):
                return "removing its channels changes the output"
            continue
        scale = float(a.abs().max()) if a.numel() else 0.0
        difference = float((a - b).abs().max()) if a.numel() else 0.0
        if not difference <= RELATIVE_TOLERANCE * scale + 1e-6:
            return (
                f"masking its channels is not exact (the output moves by {difference:.3g} once they are removed): "
                "something outside the layers acts on them, e.g. a fixed tensor added to them"
            )
    return None


def _tensors(output: Any) -> list[Tensor]:
    if torch.is_tensor(output):
        return [output]
    if isinstance(output, dict):
        return [t for key in sorted(output, key=str) for t in _tensors(output[key])]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    return []
