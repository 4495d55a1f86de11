"""``CurveRecorder``: the per-epoch curves of a run (``curves.csv``) and its final sparsity, the same for every arm;
``TestCorrectRecorder``: which test examples the final model classifies correctly."""

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from lightning_prune.callback import RealTimePruningCallback
from lightning_prune.inputs import split_batch
from lightning_prune.layers import prunable_weights, sparsity

CURVE_COLUMNS = ("train_loss", "val_loss", "val_acc", "sparsity", "ratio")


def pruning_callback(trainer: "L.Trainer") -> RealTimePruningCallback | None:
    """The run's RealTimePruningCallback, None for an arm without one."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, RealTimePruningCallback)), None)


def _effective_weight(module: torch.nn.Module, name: str) -> torch.Tensor | None:
    """The weight as the forward pass sees it: torch.prune keeps ``<name>_orig`` and ``<name>_mask``."""
    owner_name, _, attr = name.rpartition(".")
    try:
        owner = module.get_submodule(owner_name)
    except AttributeError:
        return None
    mask = getattr(owner, f"{attr}_mask", None)
    if mask is not None and f"{attr}_orig" in owner._parameters:
        return owner._parameters[f"{attr}_orig"] * mask
    weight = getattr(owner, attr, None)
    return weight if isinstance(weight, torch.Tensor) else None


class CurveRecorder(Callback):
    """Records each epoch's losses, validation accuracy, sparsity and (our callback's) ratio, for every arm alike.

    Sparsity is ``1 - non-zero / initial count`` over the prunable weights (``prunable_weights``) counted when the fit
    starts: the fraction of zeros for masked weights, and it also counts weights that structured pruning removed.

    Args:
        parameters: ``prunable_weights``'s ``parameters`` (the pruned arm's choice, so that every arm measures the same
            weights).
        exclude: ``prunable_weights``'s ``exclude``.
        pruning: The arm's RealTimePruningCallback, whose ratio is recorded; None for the other arms.
    """

    def __init__(
        self,
        parameters: list[str] | None = None,
        exclude: list[str] | None = None,
        pruning: RealTimePruningCallback | None = None,
    ) -> None:
        self.parameters = parameters
        self.exclude = exclude
        self.pruning = pruning
        self.names: list[str] = []
        self.initial = 0
        self.rows: list[dict[str, Any]] = []

    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not self.names:
            weights = prunable_weights(pl_module, self.parameters, self.exclude)
            self.names = list(weights)
            self.initial = sum(w.numel() for w in weights.values())

    def sparsity(self, module: torch.nn.Module) -> float:
        """Fraction of the initially prunable weights that are zero or gone now."""
        with torch.no_grad():
            weights = [_effective_weight(module, name) for name in self.names]
            nonzero = sum(int(torch.count_nonzero(w)) for w in weights if w is not None)
        return sparsity(nonzero, self.initial)

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        metrics = trainer.callback_metrics
        epoch = trainer.current_epoch
        ratio = None
        if self.pruning is not None:
            entries = [entry for entry in self.pruning.history if entry["epoch"] == epoch]
            ratio = entries[-1]["ratio"] if entries else None
        self.rows.append(
            {
                "epoch": epoch,
                "train_loss": _number(metrics.get("train_loss")),
                "val_loss": _number(metrics.get("val_loss")),
                "val_acc": _number(metrics.get("val_acc")),
                "sparsity": self.sparsity(pl_module),
                "ratio": ratio,
            }
        )


def _number(value: Any) -> float | None:
    if value is None:
        return None
    return float(value.item() if isinstance(value, torch.Tensor) else value)


class TestCorrectRecorder(Callback):
    """Records, for every test example in the order the test loader gives them, whether the model classifies it
    correctly: ``pl_module(*inputs).argmax(-1) == target`` over the ``(*inputs, target)`` batches of ``trainer.test``.

    ``correct`` and ``targets`` hold the last test's arrays; both stay None when a batch has another form (then the
    run has no per-example record and its pairs no test-set statistics).
    """

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.correct: np.ndarray | None = None
        self.targets: np.ndarray | None = None
        self._correct: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._usable = True

    def on_test_epoch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._correct, self._targets, self._usable = [], [], True

    def on_test_batch_end(
        self,
        trainer: "L.Trainer",
        pl_module: "L.LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        split = split_batch(batch)
        if split is None or not self._usable:
            self._usable = False
            return
        inputs, target = split
        with torch.no_grad():
            predicted = pl_module(*inputs).argmax(-1)
        self._correct.append((predicted == target).cpu())
        self._targets.append(target.cpu())

    def on_test_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self._usable and self._correct:
            self.correct = torch.cat(self._correct).numpy().astype(bool)
            self.targets = torch.cat(self._targets).numpy()
        else:
            self.correct = self.targets = None
