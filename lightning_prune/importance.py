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


# Running scores are stored in bfloat16 (half the memory of float32, with its range: |w * grad| spans many decades)
# when each update moves the average by at least this share: lerp computes in float32 and rounds the average once
# (the fresh scores' own rounding enters scaled by the update's weight), and bfloat16's rounding (0.4%) then stalls
# the average at most 5% from where float32 would be, well inside the scatter of an average over
# ~1/share noisy gradients. Smaller steps would stall further: they keep float32.
BFLOAT16_MIN_UPDATE = 0.05


class Saliency:
    """Running saliency scores for a set of named weights.

    Each :meth:`update` folds the current gradients in as an exponential average over optimizer steps:
    ``S = beta^k * S + (1 - beta^k) * |w * grad|`` where ``k`` is the number of steps since the previous update
    (1 when every step is scored: ``S = beta * S + (1 - beta) * |w * grad|``). Scoring every few steps therefore keeps
    the same memory of the past, at a fraction of the cost. The buffers exist only while they are needed: from the
    first update until :meth:`release`.

    Args:
        weights: The prunable weights, by name. Their ``.grad`` is read by :meth:`update`.
        method: ``"taylor"``, ``"gradient"`` or ``"magnitude"``.
        beta: Smoothing of the running average per step, in [0, 1).
        every: Steps between updates (what the caller intends): the storage is bfloat16 when an update's share
            ``1 - beta^every`` is at least 5%, float32 otherwise.

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
        >>> w.grad = torch.tensor([0.5, 0.5, -4.0])
        >>> saliency = Saliency({"w": w}, method="taylor", beta=0.0)
        >>> saliency.update()
        >>> saliency.scores()["w"]  # one update with beta 0: the update itself, stored in bfloat16
        tensor([0.5000, 1.0000, 2.0000], dtype=torch.bfloat16)
        >>> Saliency({"w": w}, method="magnitude").scores()["w"]
        tensor([1.0000, 2.0000, 0.5000])
    """

    def __init__(
        self, weights: Mapping[str, Tensor], method: str = "taylor", beta: float = 0.99, every: int = 1
    ) -> None:
        if method not in IMPORTANCE_METHODS:
            raise ValueError(f"`importance` must be one of {IMPORTANCE_METHODS}, got {method!r}")
        if not 0 <= beta < 1:
            raise ValueError(f"`saliency_beta` must be in [0, 1), got {beta!r}")
        self.method = method
        self.scorer = SCORERS[method]
        self.beta = beta
        self.weights = dict(weights)
        self.updates = 0
        self.skipped = 0  # steps since the last update: the next one stands for them too
        self.running: dict[str, Tensor] = {}
        self.dtype = torch.bfloat16 if 1 - beta**every >= BFLOAT16_MIN_UPDATE else torch.float32

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
        """Fold the current gradients into the running scores (fused passes over all tensors at once)."""
        if not self.accumulates:
            return
        names = [n for n, w in self.weights.items() if w.grad is not None]
        if not names:
            return
        for name in names:
            if name not in self.running:
                self.running[name] = torch.zeros_like(self.weights[name], dtype=self.dtype,
                                                      memory_format=torch.contiguous_format)  # fmt: skip
        weight = 1 - self.beta ** (self.skipped + 1)
        self.skipped = 0
        fresh = self.scorer([self.weights[n] for n in names], [self.weights[n].grad for n in names])
        running = [self.running[n] for n in names]
        if self.dtype != torch.float32:
            fresh = [f.to(self.dtype) for f in fresh]  # lerp computes in float32 and rounds the average once
        torch._foreach_lerp_(running, fresh, weight)
        self.updates += 1

    def skip(self) -> None:
        """A step whose gradient is not folded in."""
        self.skipped += 1

    def release(self) -> None:
        """Free the running scores (no more decisions will read them); :meth:`scores` falls back to ``|w|``."""
        self.running, self.updates = {}, 0

    @torch.no_grad()
    def scores(self) -> dict[str, Tensor]:
        """The current scores, one tensor per weight (shaped like it). Before any gradient, ``|w|``."""
        if not self.accumulates or self.updates == 0:
            return {name: w.detach().abs() for name, w in self.weights.items()}
        return {name: self.running.get(name, torch.zeros_like(w)) for name, w in self.weights.items()}

    def buffer_bytes(self) -> int:
        return sum(r.numel() * r.element_size() for r in self.running.values())

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
        self.running = {
            name: value.to(device=self.weights[name].device, dtype=self.dtype)
            for name, value in state["running"].items()
        }
