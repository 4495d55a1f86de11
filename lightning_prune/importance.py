"""Saliency of prunable weights: how much the loss would change if a weight were removed.

- ``"taylor"`` (default): running average of ``|w * grad|``, the first-order Taylor estimate of that change;
- ``"gradient"``: running average of ``|grad|``;
- ``"magnitude"``: ``|w|``, read when asked (nothing to accumulate).

The running average is updated once per optimizer step from gradients that already exist, so it costs no extra
forward or backward pass, and holds one buffer per prunable weight.
"""

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor


def taylor(weights: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
    """``|w * grad|``: the first-order Taylor estimate of the loss change if ``w`` were removed."""
    fresh = torch._foreach_mul(weights, grads)
    torch._foreach_abs_(fresh)
    return fresh


def gradient(weights: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
    """``|grad|``."""
    return torch._foreach_abs(grads)


# method -> what one step contributes to the running score (None: the score is |w| now, nothing to accumulate)
SCORERS: dict[str, Callable[[list[Tensor], list[Tensor]], list[Tensor]] | None] = {
    "taylor": taylor,
    "gradient": gradient,
    "magnitude": None,
}
IMPORTANCE_METHODS = tuple(SCORERS)


class Saliency:
    """Running saliency scores for a set of named weights.

    Args:
        weights: The prunable weights, by name. Their ``.grad`` is read by :meth:`update`.
        method: ``"taylor"``, ``"gradient"`` or ``"magnitude"``.
        beta: Smoothing of the running average per step: ``S = beta * S + (1 - beta) * |w * grad|``.

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
        >>> w.grad = torch.tensor([0.5, 0.5, -4.0])
        >>> saliency = Saliency({"w": w}, method="taylor", beta=0.0)
        >>> saliency.update()
        >>> saliency.scores()["w"]
        tensor([0.5000, 1.0000, 2.0000])
        >>> Saliency({"w": w}, method="magnitude").scores()["w"]
        tensor([1.0000, 2.0000, 0.5000])
    """

    def __init__(self, weights: Mapping[str, Tensor], method: str = "taylor", beta: float = 0.99) -> None:
        if method not in IMPORTANCE_METHODS:
            raise ValueError(f"`importance` must be one of {IMPORTANCE_METHODS}, got {method!r}")
        if not 0 <= beta < 1:
            raise ValueError(f"`saliency_beta` must be in [0, 1), got {beta!r}")
        self.method = method
        self.scorer = SCORERS[method]
        self.beta = beta
        self.weights = dict(weights)
        self.updates = 0
        self.skipped = 0  # steps since the last update, folded in as a decay by the next one
        self.running: dict[str, Tensor] = {}
        if self.accumulates:
            self.running = {
                name: torch.zeros_like(w, memory_format=torch.contiguous_format) for name, w in self.weights.items()
            }

    @property
    def horizon(self) -> int:
        """Steps after which a gradient keeps under e^-4 (2%) of its weight in the running score."""
        return math.ceil(4 / (1 - self.beta) - 1e-9)

    @property
    def accumulates(self) -> bool:
        return self.scorer is not None

    def follow_weights(self) -> None:
        """Move the running scores to their weights' devices (the model may have moved since they were made)."""
        for name, running in self.running.items():
            self.running[name] = running.to(self.weights[name].device)

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current gradients into the running scores (one fused pass per list of tensors)."""
        if not self.accumulates:
            return
        names = [n for n, w in self.weights.items() if w.grad is not None]
        if not names:
            return
        grads = [self.weights[n].grad for n in names]
        running = [self.running[n] for n in names]
        # skipped steps count as steps that brought nothing: the history decays as if they had happened
        decay = self.beta ** (self.skipped + 1)
        self.skipped = 0
        fresh = self.scorer([self.weights[n] for n in names], grads)
        torch._foreach_mul_(running, decay)
        torch._foreach_add_(running, fresh, alpha=1 - self.beta)
        self.updates += 1

    def skip(self) -> None:
        """A step whose gradient is not folded in (too far from the next decision to matter)."""
        self.skipped += 1

    @torch.no_grad()
    def scores(self) -> dict[str, Tensor]:
        """The current scores, one tensor per weight (shaped like it). Before any gradient, ``|w|``."""
        if not self.accumulates or self.updates == 0:
            return {name: w.detach().abs() for name, w in self.weights.items()}
        return self.running

    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "updates": self.updates,
            "skipped": self.skipped,
            "running": {k: v.clone() for k, v in self.running.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["method"] != self.method:
            raise ValueError(f"saved saliency is {state['method']!r}, this callback uses {self.method!r}")
        self.updates = state["updates"]
        self.skipped = state.get("skipped", 0)
        for name, value in state["running"].items():
            self.running[name] = value.to(self.weights[name].device)
