"""The signals that pace pruning, summed over a pruning interval: the monitored loss and the gradient norm.

Sums and counts stay on the device (no host sync per step) and are part of the callback's state, so a run resumed in
the middle of an interval decides on the same inputs as one that never stopped.
"""

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


class RunningMean:
    """A sum and a count of scalar tensors; :meth:`take` returns their mean and starts over.

    Example:
        >>> mean = RunningMean()
        >>> mean.add(torch.tensor(1.0)); mean.add(torch.tensor(3.0))
        >>> float(mean.take()), mean.take()
        (2.0, None)
    """

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.count = 0

    def add(self, value: Tensor) -> None:
        value = value.detach().float()
        self.total = value if self.total is None else self.total + value
        self.count += 1

    def take(self) -> Tensor | None:
        mean = None if not self.count else self.total / self.count
        self.total, self.count = None, 0
        return mean

    def state_dict(self) -> dict[str, Any]:
        return {"total": None if self.total is None else self.total.cpu(), "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.total, self.count = state["total"], state["count"]


@torch.no_grad()
def total_grad_norm(parameters: list[Tensor]) -> Tensor | None:
    """The 2-norm of all gradients together, in fused kernels (None when no parameter has a gradient)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class PacingSignals:
    """What the controller decides on, gathered over one pruning interval: the monitored loss and the gradient norm.

    With epoch intervals the loss is ``monitor``'s epoch value as logged; with step intervals it is the mean of the
    values ``monitor`` had after each step of the interval.

    Args:
        monitor: The logged metric that paces pruning.
        per_step: Whether decisions come every few steps (rather than at epoch ends).
    """

    def __init__(self, monitor: str, per_step: bool) -> None:
        self.monitor = monitor
        self.per_step = per_step
        self.loss = RunningMean()
        self.grad_norm = RunningMean()

    def after_step(self, metrics: Mapping[str, Any]) -> None:
        value = metrics.get(self.monitor) if self.per_step else None
        if value is not None:
            self.loss.add(torch.as_tensor(value))

    def add_grad_norm(self, parameters: list[Tensor]) -> None:
        norm = total_grad_norm(parameters)
        if norm is not None:
            self.grad_norm.add(norm)

    def take_loss(self, metrics: Mapping[str, Any]) -> Tensor:
        """The interval's pacing loss, and a fresh start for the next interval.

        Raises:
            RuntimeError: ``monitor`` was not logged; the message lists what was.
        """
        value = self.loss.take()
        if value is None:
            value = metrics.get(self.monitor)
        if value is None:
            raise RuntimeError(
                f"RealTimePruningCallback could not read the monitored metric `{self.monitor}` at the end of the "
                f"pruning interval. Available metrics: {sorted(metrics)}. Log it in your LightningModule with "
                f"`self.log({self.monitor!r}, loss, on_epoch=True)`, or pass `monitor=` one of the available names."
            )
        return torch.as_tensor(value, dtype=torch.float32)

    def take_grad_norm(self) -> Tensor | None:
        return self.grad_norm.take()

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss.state_dict(), "grad_norm": self.grad_norm.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.loss.load_state_dict(state["loss"])
        self.grad_norm.load_state_dict(state["grad_norm"])
