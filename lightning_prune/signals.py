"""The signals that pace pruning, summed over a pruning interval: the monitored loss and the gradient norm.

Sums and counts stay on the device (no host sync per step) and are part of the callback's state, so a run resumed in
the middle of an interval decides on the same inputs as one that never stopped.
"""

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_prune.inputs import call, to_device_of


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
    ``training_step``), or its epoch value when it is logged per epoch only (epoch intervals only).

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
        self.grad_norm = RunningMean()
        self.skipped_steps = 0
        # the metric's value object seen last: Lightning replaces it at every step only when it is logged per step
        self._seen: Any = None

    def on_epoch_start(self, metrics: Mapping[str, Any]) -> None:
        self._seen = metrics.get(self.monitor) if self.monitor is not None else None

    def after_batch(self, outputs: Any, metrics: Mapping[str, Any]) -> None:
        """Fold in this batch's loss: the one ``training_step`` returned, or ``monitor``'s fresh per-step value.

        Raises:
            RuntimeError: ``monitor`` is None and ``training_step`` returned no loss.
        """
        if self.monitor is None:
            loss = loss_of(outputs)
            if loss is None:
                returned = "nothing" if outputs is None or outputs == {} else type(outputs).__name__
                raise RuntimeError(
                    "RealTimePruningCallback paces pruning by the loss `training_step` returns, but it returned "
                    f"{returned}. Return the loss (a tensor, or a dict with 'loss'), or log a metric "
                    "with `self.log(...)` and pass its name as `monitor=`."
                )
            self.loss.add(loss)
            return
        value = metrics.get(self.monitor)
        if value is not None and value is not self._seen:
            self.loss.add(torch.as_tensor(value))
        self._seen = value

    def after_gradients(self, parameters: list[Tensor]) -> bool:
        """Fold the step's total gradient norm in; False (and the step counted as skipped) when it is not finite."""
        norm = total_grad_norm(parameters)
        if norm is None:
            return True
        if not bool(torch.isfinite(norm)):
            self.skipped_steps += 1
            return False
        self.grad_norm.add(norm)
        return True

    def take_loss(self, metrics: Mapping[str, Any]) -> Tensor:
        """The interval's pacing loss, and a fresh start for the next interval.

        Raises:
            RuntimeError: No value of ``monitor`` was seen; the message lists what was logged and what to change.
        """
        value = self.loss.take()
        if value is None and self.monitor is not None and not self.per_step:
            value = metrics.get(self.monitor)
        if value is None:
            raise RuntimeError(self._missing(metrics))
        return torch.as_tensor(value, dtype=torch.float32)

    def _missing(self, metrics: Mapping[str, Any]) -> str:
        if self.monitor is None:
            return (
                "RealTimePruningCallback saw no training step in this pruning interval, so it has no loss to pace by."
            )
        if self.per_step:
            return (
                f"RealTimePruningCallback decides every few steps, but `{self.monitor}` had no per-step value in this "
                f"pruning interval (logged per epoch only, or not at all; logged now: {sorted(metrics)}). Log it per "
                f"step (`self.log({self.monitor!r}, loss, on_step=True)`), or leave `monitor=None` to pace by the loss "
                "`training_step` returns."
            )
        return (
            f"RealTimePruningCallback could not read the monitored metric `{self.monitor}` at the end of the pruning "
            f"interval. Available metrics: {sorted(metrics)}. Log it in your LightningModule with "
            f"`self.log({self.monitor!r}, loss)`, pass `monitor=` one of the available names, or leave `monitor=None` "
            "to pace by the loss `training_step` returns."
        )

    def take_grad_norm(self) -> Tensor | None:
        return self.grad_norm.take()

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss.state_dict(), "grad_norm": self.grad_norm.state_dict(), "skipped": self.skipped_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.loss.load_state_dict(state["loss"])
        self.grad_norm.load_state_dict(state["grad_norm"])
        self.skipped_steps = state["skipped"]


# Samples of the first training batch kept as the damage probe: enough for a stable distortion, few enough to cost
# two small forward passes per decision.
PROBE_SIZE = 256


def output_tensor(output: Any) -> Tensor | None:
    """The tensor a model's output stands for: itself, the first tensor of a tuple or list, or of a dict (its
    ``"logits"`` first, as Hugging Face models return them); None when there is none."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        output = [output["logits"]] if isinstance(output.get("logits"), Tensor) else list(output.values())
    if isinstance(output, (list, tuple)):
        return next((item for item in output if isinstance(item, Tensor)), None)
    return None


class DamageProbe:
    """The damage of a cut: how far it moved the model's outputs on a fixed probe, just before against just after.

    ``damage = ||after - before||^2 / ||before||^2`` over the probe (the inputs of the first training batch). Both
    passes run in eval mode without gradients, so the same inputs through the same network differ by the cut alone:
    unlike the training loss, which falls as the network learns whatever the cut did, this measures the cut.

    Example:
        >>> probe = DamageProbe()
        >>> probe.capture([torch.ones(4, 3)])
        >>> model = torch.nn.Linear(3, 2, bias=False)
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> probe.before_cut(model)
        >>> with torch.no_grad():
        ...     model.weight[0] = 0.0  # cut half of the weights: one of two equal outputs goes
        >>> probe.after_cut(model)
        0.5
    """

    def __init__(self) -> None:
        self.inputs: list[Any] = []  # the forms the model may be called with; the one that ran, once known
        self.targets: list[str] = [""]  # the submodules they may run through (a module without forward: a child)
        self.last: float | None = None  # the damage of the last cut, until a decision takes it
        self._before: Tensor | None = None

    def capture(self, candidates: list[Any], targets: list[str] | tuple[str, ...] = ("",)) -> None:
        """Keep the probe once: ``candidates`` (``inputs.candidate_inputs``), to be run through the first of
        ``targets`` (submodule names, ``structured.forward_targets``) that takes one of them."""
        if not self.inputs and candidates:
            self.inputs, self.targets = list(candidates), list(targets)

    @torch.no_grad()
    def outputs(self, model: torch.nn.Module) -> Tensor:
        """The outputs on the probe, in eval mode; the first target and input form that run are kept.

        Raises:
            RuntimeError: No probe yet, or the model runs on none of its forms; the message says what to change.
        """
        if not self.inputs:
            raise RuntimeError("RealTimePruningCallback(pace_by='damage') has no probe: no training batch was seen.")
        training = model.training
        model.eval()
        failures = []
        try:
            for target in self.targets:
                for candidate in self.inputs:
                    try:
                        output = output_tensor(call(model.get_submodule(target), to_device_of(model, candidate)))
                    except Exception as error:  # a form the model is not called with: try the next
                        failures.append(f"{type(error).__name__}: {error}")
                        continue
                    if output is not None:
                        self.inputs, self.targets = [candidate], [target]
                        return output.detach().float()
                    failures.append("the output holds no tensor")
        finally:
            model.train(training)
        raise RuntimeError(
            "RealTimePruningCallback(pace_by='damage') measures a cut by the model's outputs on the first training "
            f"batch, but `{type(model).__name__}` could not be called on it ({'; '.join(failures)}). Give the module a "
            "`forward` that takes the batch's inputs, or use pace_by='loss'."
        )

    def before_cut(self, model: torch.nn.Module) -> None:
        """The outputs every cut until the next call is compared with (a cut tried, undone and tried smaller too)."""
        self._before = self.outputs(model)

    def after_cut(self, model: torch.nn.Module) -> float:
        """The damage of the cut made since :meth:`before_cut`; kept in ``last`` until :meth:`take`."""
        after, before = self.outputs(model), self._before
        scale = before.pow(2).sum().clamp_min(torch.finfo(before.dtype).tiny)
        self.last = float((after - before).pow(2).sum() / scale)
        return self.last

    def take(self) -> float | None:
        """The last cut's damage, once: a decision with no cut since the previous one gets None."""
        damage, self.last = self.last, None
        return damage

    def state_dict(self) -> dict[str, Any]:
        inputs = [_to_cpu(candidate) for candidate in self.inputs]
        return {"inputs": inputs, "targets": self.targets, "last": self.last}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inputs, self.targets, self.last = list(state["inputs"]), list(state["targets"]), state["last"]


def _to_cpu(inputs: Any) -> Any:
    return tuple(t.cpu() for t in inputs) if isinstance(inputs, tuple) else inputs.cpu()
