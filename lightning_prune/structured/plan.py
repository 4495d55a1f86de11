"""Before training: what the model is called with, which of its groups can be pruned, and which cannot.

The candidates are what the model may take (``inputs.candidate_inputs``); the forward target is the model itself or,
for a LightningModule without a ``forward`` (its ``training_step`` calls ``self.net(x)``), the submodule that holds
the prunable layers. The first pair that runs is traced once, every group is checked by doing
(``verify.py``), and the plan says which groups are pruned and which are left out, and why.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_prune.inputs import Inputs, as_tuple, forward_targets
from lightning_prune.structured.find import find_groups
from lightning_prune.structured.groups import ChannelGroup, SkippedGroup
from lightning_prune.structured.tracing import EvalMode
from lightning_prune.structured.verify import run, verify_groups


@dataclass
class Plan:
    """The forward target and example input that work, the groups to prune, those left out, and what was tried."""

    target: str
    example: Inputs | None
    groups: list[ChannelGroup]
    skipped: list[SkippedGroup]
    tried: list[str] = field(default_factory=list)


def plan(
    model: nn.Module,
    candidates: Sequence[Inputs],
    roots: Sequence[str],
    classifier: str | None,
    excluded: Sequence[str] = (),
) -> Plan:
    """Find a forward target and candidate input that run, trace once, and check every group.

    Returns a plan with no groups, and what was tried, when no pair runs.
    """
    tried: list[str] = []
    for target in forward_targets(model, roots):
        for example in candidates:
            error = _fails(model, target, example)
            if error is not None:
                tried.append(f"{_call(target)} on {_shapes(example)}: {error}")
                continue
            try:
                groups, skipped = find_groups(model, example, roots, classifier, target, excluded)
            except Exception as error:  # torch-pruning's own failures: nothing traced can be pruned
                tried.append(f"tracing {_call(target)} on {_shapes(example)} with torch-pruning: {error!r}")
                return Plan(target, example, [], [SkippedGroup(r, [r], f"tracing failed: {error!r}") for r in roots],
                            tried)  # fmt: skip
            failed = verify_groups(model, target, example, groups)
            names = {f.name for f in failed}
            return Plan(target, example, [g for g in groups if g.name not in names], skipped + failed, tried)
    return Plan("", None, [], [], tried)


def _fails(model: nn.Module, target: str, example: Inputs) -> str | None:
    """Why calling the target on ``example`` fails (None when it runs)."""
    try:
        with EvalMode(model), torch.no_grad():
            run(model, target, example)
    except Exception as error:  # any error means: not this pair
        return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:160]}"
    return None


def _call(target: str) -> str:
    return f"model.{target}(...)" if target else "model(...)"


def _shapes(example: Inputs) -> str:
    return "(" + ", ".join(f"{tuple(t.shape)}" for t in as_tuple(example)) + ")"
