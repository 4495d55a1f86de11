"""The signals that pace pruning, summed over a pruning interval: the monitored loss and the gradient norm.

The total gradient norm is measured at every optimizer step (one fused pass over the gradients), so a short spike is
seen wherever it falls in the interval. Sums, counts and the maximum stay on the device (no host sync per step) and
are part of the callback's state, so a run resumed in the middle of an interval decides on the same inputs as one
that never stopped.
"""

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


class GradNormStats:
    """Per-step total gradient norms over an interval, on the device: the finite ones' sum, count and maximum, and
    how many were not finite (steps that GradScaler skips).

    Example:
        >>> stats = GradNormStats()
        >>> for norm in (1.0, float("nan"), 3.0):
        ...     stats.add(torch.tensor(norm))
        >>> mean, peak = stats.take()
        >>> float(mean), float(peak), stats.skipped
        (2.0, 3.0, 1)
    """

    def __init__(self) -> None:
        self.sums: Tensor | None = None  # [sum of the finite norms, their count, the non-finite count]
        self.peak: Tensor | None = None
        self.skipped_before = 0  # non-finite steps of the intervals already taken

    def add(self, norm: Tensor) -> None:
        finite = torch.isfinite(norm)
        value = torch.where(finite, norm.detach().float(), 0.0)
        step = torch.stack([value, finite.float(), (~finite).float()])
        if self.sums is None:
            self.sums, self.peak = step, value
            return
        # after a resume the saved sums are on the CPU: follow the step's device
        self.sums = self.sums.to(step.device) + step
        self.peak = torch.maximum(self.peak.to(step.device), value)

    @property
    def skipped(self) -> int:
        """Steps with non-finite gradients so far (a host sync: read it at decisions, not per step)."""
        return self.skipped_before + (0 if self.sums is None else int(self.sums[2]))

    def take(self) -> tuple[Tensor | None, Tensor | None]:
        """The interval's mean and maximum (None when no finite norm was seen), and a fresh start."""
        sums, peak = self.sums, self.peak
        self.sums = self.peak = None
        if sums is None:
            return None, None
        self.skipped_before += int(sums[2])
        if float(sums[1]) == 0:
            return None, None
        return sums[0] / sums[1], peak

    def state_dict(self) -> dict[str, Any]:
        on_cpu = (None, None) if self.sums is None else (self.sums.cpu(), self.peak.cpu())
        return {"sums": on_cpu[0], "peak": on_cpu[1], "skipped": self.skipped_before}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums, self.peak, self.skipped_before = state["sums"], state["peak"], state["skipped"]


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
        # after a resume the saved sum is on the CPU: follow the value's device
        self.total = value if self.total is None else self.total.to(value.device) + value
        self.count += 1

    def take(self) -> Tensor | None:
        mean = None if not self.count else self.total / self.count
        self.total, self.count = None, 0
        return mean

    def state_dict(self) -> dict[str, Any]:
        return {"total": None if self.total is None else self.total.cpu(), "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.total, self.count = state["total"], state["count"]


def reduce_mean(strategy: Any, value: Tensor) -> float:
    """The mean over the ranks (each saw its own shard), the same on every rank: what decisions are made on."""
    return float(strategy.reduce(value.to(strategy.root_device), reduce_op="mean"))


def guard_value(name: str, metrics: Mapping[str, Any]) -> Tensor:
    """The guard metric from a validation run's logged metrics; a missing one names the ones there are."""
    if name not in metrics:
        raise RuntimeError(
            f"RealTimePruningCallback could not read the guard metric `{name}` after validation. Available metrics: "
            f"{sorted(metrics)}. Log it in `validation_step` (e.g. `self.log({name!r}, acc)`) or pass `guard=` one "
            "of the available names."
        )
    return torch.as_tensor(metrics[name], dtype=torch.float32)


@torch.no_grad()
def total_grad_norm(parameters: list[Tensor]) -> Tensor | None:
    """The 2-norm of all gradients together, in fused kernels (None when no parameter has a gradient)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def loss_of(outputs: Any) -> Tensor | None:
    """The loss in what ``training_step`` returned: the tensor itself, or the ``"loss"`` of a dict."""
    if isinstance(outputs, Tensor):
        return outputs
    if isinstance(outputs, Mapping) and isinstance(outputs.get("loss"), Tensor):
        return outputs["loss"]
    return None


class PacingSignals:
    """What the controller decides on, gathered over one pruning interval: the pacing loss and the gradient norm.

    The pacing loss is, by default (``monitor=None``), the mean over the interval of the loss ``training_step``
    returns, so any module works without logging anything. With ``monitor="name"`` it is that logged metric: the mean
    of its per-step values over the interval when it is logged per step (``on_step=True``, Lightning's default in
    ``training_step``), or its epoch value when it is logged per epoch only (decisions at an epoch's end only). A
    module that returns nothing (manual optimisation) and logs exactly one metric named ``loss`` or ``*_loss`` is
    paced by that metric, said once.

    Steps with non-finite gradients (what AMP's GradScaler skips) are counted in ``skipped_steps`` and enter neither
    the gradient norm nor, through the callback, the saliency.

    Args:
        monitor: None, or the logged metric that paces pruning.
        per_step: Whether decisions come every few steps (rather than at epoch ends).
    """

    def __init__(self, monitor: str | None, per_step: bool) -> None:
        self.monitor = monitor
        self.per_step = per_step
        self.loss = RunningMean()
        self.grad_norms = GradNormStats()
        self.found_monitor: str | None = None  # the logged loss a module returning nothing is paced by
        # the metric's value object seen last: Lightning replaces it at every step only when it is logged per step
        self._seen: Any = None

    @property
    def skipped_steps(self) -> int:
        return self.grad_norms.skipped

    @property
    def metric(self) -> str | None:
        """The logged metric read for the pacing loss (None: the loss ``training_step`` returns)."""
        return self.monitor or self.found_monitor

    def check_loss_source(self, module: Any, optimizers: int) -> None:
        """Before the first step: a module that steps several optimizers itself (manual optimisation, a GAN) has one
        loss per optimizer, and which one paces pruning is the user's to say.

        Raises:
            ValueError: Manual optimisation with several optimizers and no ``monitor``.
        """
        if self.monitor is None and not module.automatic_optimization and optimizers > 1:
            raise ValueError(
                f"RealTimePruningCallback paces pruning by one loss, and `{type(module).__name__}` steps {optimizers} "
                "optimizers itself (manual optimisation), each on its own loss: pass `monitor=` the name of the "
                "logged loss to pace by (e.g. the generator's)."
            )

    def on_epoch_start(self, metrics: Mapping[str, Any]) -> None:
        self._seen = metrics.get(self.metric) if self.metric is not None else None

    def after_batch(self, outputs: Any, metrics: Mapping[str, Any]) -> str | None:
        """Fold in this batch's loss: the one ``training_step`` returned, or ``monitor``'s fresh per-step value.
        Returns a line to say once when a module that returns nothing is paced by the one loss it logs.

        Raises:
            RuntimeError: ``monitor`` is None, ``training_step`` returned no loss, and the module does not log
                exactly one metric named ``loss`` or ending in ``loss``.
        """
        said = None
        if self.metric is None:
            loss = loss_of(outputs)
            if loss is not None:
                self.loss.add(loss)
                return None
            self.found_monitor = self._logged_loss(outputs, metrics)
            said = (f"RealTimePruningCallback: `training_step` returns no loss; pruning is paced by the one loss it "
                    f"logs, `{self.found_monitor}` (pass `monitor=` to choose another).")  # fmt: skip
        value = metrics.get(self.metric)
        if value is not None and value is not self._seen:
            self.loss.add(torch.as_tensor(value))
        self._seen = value
        return said

    @staticmethod
    def _logged_loss(outputs: Any, metrics: Mapping[str, Any]) -> str:
        returned = "nothing" if outputs is None or outputs == {} else type(outputs).__name__
        losses = sorted({_without_fork(name) for name in metrics if _without_fork(name).endswith("loss")})
        if len(losses) == 1:
            return losses[0]
        found = f"it logs several losses ({', '.join(f'`{n}`' for n in losses)})" if losses else "it logs no loss"
        raise RuntimeError(
            f"RealTimePruningCallback paces pruning by the loss `training_step` returns, but it returned {returned} "
            f"and {found}. Return the loss (a tensor, or a dict with 'loss'), or pass `monitor=` the name of the "
            "logged metric to pace by."
        )

    def after_gradients(self, parameters: list[Tensor], verdict: bool = True) -> bool:
        """Fold the step's total gradient norm in (on the device). With ``verdict``, also say whether it was finite
        (a host sync: asked only on the steps that update the saliency); without it, True."""
        norm = total_grad_norm(parameters)
        if norm is None:
            return True
        self.grad_norms.add(norm)
        return bool(torch.isfinite(norm)) if verdict else True

    def take_loss(self, metrics: Mapping[str, Any], at_epoch_end: bool = True) -> Tensor:
        """The interval's pacing loss, and a fresh start for the next interval.

        Raises:
            RuntimeError: No value of ``monitor`` was seen; the message lists what was logged and what to change.
        """
        value = self.loss.take()
        if value is None and self.metric is not None and at_epoch_end and not self.per_step:
            value = metrics.get(self.metric)
        if value is None:
            raise RuntimeError(self._missing(metrics))
        return torch.as_tensor(value, dtype=torch.float32)

    def _missing(self, metrics: Mapping[str, Any]) -> str:
        if self.metric is None:
            return (
                "RealTimePruningCallback saw no training step in this pruning interval, so it has no loss to pace by."
            )
        if self.per_step:
            return (
                f"RealTimePruningCallback decides every few steps, but `{self.metric}` had no per-step value in this "
                f"pruning interval (logged per epoch only, or not at all; logged now: {sorted(metrics)}). Log it per "
                f"step (`self.log({self.metric!r}, loss, on_step=True)`), or leave `monitor=None` to pace by the loss "
                "`training_step` returns."
            )
        return (
            f"RealTimePruningCallback could not read the monitored metric `{self.metric}` at the end of the pruning "
            f"interval. Available metrics: {sorted(metrics)}. Log it in your LightningModule with "
            f"`self.log({self.metric!r}, loss)`, pass `monitor=` one of the available names, or leave `monitor=None` "
            "to pace by the loss `training_step` returns."
        )

    def take(self, strategy: Any, metrics: Mapping[str, Any], at_epoch_end: bool) -> dict[str, float | None]:
        """The interval's ``loss``, ``grad_norm`` (mean) and ``grad_norm_max``, averaged over the ranks (each saw its
        own shard; the gradient norms agree after the all-reduce, up to float noise), and a fresh start."""
        taken = {"loss": reduce_mean(strategy, self.take_loss(metrics, at_epoch_end))}
        for name, value in zip(("grad_norm", "grad_norm_max"), self.take_grad_norms(), strict=True):
            taken[name] = None if value is None else reduce_mean(strategy, value)
        return taken

    def take_grad_norms(self) -> tuple[Tensor | None, Tensor | None]:
        """The interval's mean and largest total gradient norm."""
        return self.grad_norms.take()

    def take_grad_norm(self) -> Tensor | None:
        return self.take_grad_norms()[0]

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss.state_dict(), "grad_norms": self.grad_norms.state_dict(),
                "found_monitor": self.found_monitor}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.loss.load_state_dict(state["loss"])
        self.found_monitor = state.get("found_monitor")
        if "grad_norms" in state:
            self.grad_norms.load_state_dict(state["grad_norms"])
            return
        # a checkpoint of the sampled gradient norm (a sum and a count), before every step was measured
        saved, count = state["grad_norm"]["total"], state["grad_norm"]["count"]
        self.grad_norms.skipped_before = state["skipped"]
        if saved is not None and count:
            self.grad_norms.sums = torch.stack([saved.float(), torch.tensor(float(count)), torch.tensor(0.0)])
            self.grad_norms.peak = saved.float() / count


def _without_fork(name: str) -> str:
    """A logged metric's name without the ``_step`` / ``_epoch`` suffix Lightning adds to one logged both ways."""
    for suffix in ("_step", "_epoch"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
