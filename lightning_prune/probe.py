"""The damage of a cut: how far it moved the model's outputs on a fixed probe (``pace_by="damage"``)."""

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_prune.inputs import call, to_device_of

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
