"""What the structured pruner reports and restores: the error when nothing can be pruned, and saved masks and
saliency fitted to the parameters that are masked now (a checkpoint may hold more or fewer of them)."""

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from lightning_prune.structured.plan import Plan


def nothing_to_prune(plan: Plan) -> str:
    """Why structured pruning can prune nothing: each layer left out and why, and each call that failed."""
    lines = ["structured pruning found nothing it can prune in this model."]
    lines += [f"- {group.message()}" for group in plan.skipped]
    if plan.tried:
        lines.append("Calls tried:")
        lines += [f"- {attempt}" for attempt in plan.tried]
    lines.append(
        "Give the LightningModule a `forward` (or `example_input_array`) that runs on a batch's inputs, leave the "
        "layers above out with `exclude=[...]` if other layers are to be pruned, or use mode='unstructured'."
    )
    return "\n".join(lines)


def fit_saved_state(state: Mapping[str, Any], pruned: Mapping[str, Tensor], scored: Mapping[str, Tensor]) -> dict:
    """``state`` with its masks and running saliency restricted to the parameters masked (``pruned``) and scored
    (``scored``) now; a parameter the checkpoint has no mask of was never cut.

    Raises:
        KeyError: The checkpoint cut a parameter that is not masked now (it belongs to another model).
    """
    masks = state["masks"]
    foreign = [n for n, mask in masks["pruned"].items() if n not in pruned and bool(mask.any())]
    if foreign:
        raise KeyError(f"the saved masks do not fit this model: {sorted(foreign)[:10]} were cut but are not prunable")
    fitted_masks = {
        "pruned": {n: masks["pruned"].get(n, mask.new_zeros(mask.shape).cpu()) for n, mask in pruned.items()},
        "last_cut": {n: cut for n, cut in masks["last_cut"].items() if n in pruned},
    }
    saliency = dict(state["saliency"])
    saliency["running"] = {n: v for n, v in saliency["running"].items() if n in scored}
    return {**state, "masks": fitted_masks, "saliency": saliency}
