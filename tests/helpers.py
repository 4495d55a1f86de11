"""Small LightningModules and data used by the callback tests (top level, so DDP spawn can pickle them), and the
checks the drop-in tests share."""

import csv
import math
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import RealTimePruningCallback, structured
from lightning_prune.layers import default_prunable


def teacher_data(samples: int = 256, features: int = 16, classes: int = 4, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, features, generator=generator)
    teacher = torch.randn(features, classes, generator=generator)
    return TensorDataset(x, (x @ teacher).argmax(dim=1))


def loader(samples: int = 256, batch_size: int = 16, seed: int = 0) -> DataLoader:
    return DataLoader(teacher_data(samples, seed=seed), batch_size=batch_size, shuffle=False)


class TinyNet(L.LightningModule):
    """Not our ClassificationModule: its own loss name, no validation loop, and an optional scripted metric.

    ``scripted`` maps epoch -> value logged as ``watch``, to drive the controller deterministically.
    """

    def __init__(
        self, loss_name: str = "objective", scripted: dict | None = None, lr: float = 1e-2, per_step: bool = False
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        self.loss_name = loss_name
        self.scripted = scripted or {}
        self.lr = lr
        self.per_step = per_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log(self.loss_name, loss, on_step=self.per_step, on_epoch=not self.per_step)
        if self.current_epoch in self.scripted:
            self.log("watch", float(self.scripted[self.current_epoch]), on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def quiet_trainer(**kwargs) -> L.Trainer:
    defaults = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "devices": 1,
    }
    return L.Trainer(**{**defaults, **kwargs})


class CrashAt(Callback):
    """Raises at the start of an epoch: a run that dies there, to be resumed from its last checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


class Classifier(L.LightningModule):
    """Cross-entropy over any backbone taking ``(*inputs)``; logs nothing (the callback paces by the returned loss)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, *inputs):
        return self.backbone(*inputs)

    def training_step(self, batch, batch_idx):
        *inputs, target = batch
        return F.cross_entropy(self(*inputs), target)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class ZeroChecker(Callback):
    """Before every batch: every cut weight is exactly zero."""

    def __init__(self, pruning: RealTimePruningCallback) -> None:
        self.pruning, self.checked = pruning, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        masks = self.pruning.masks
        for name, cut in masks.pruned.items():
            if cut.any():
                assert (masks.weights[name][cut] == 0).all(), f"{name}: a cut weight moved"
                self.checked += 1


def logged_pruning_values(log_dir: str) -> list[float]:
    """Every ``pruning/*`` and ``grad_norm/*`` value a CSVLogger wrote."""
    with open(f"{log_dir}/metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    return [float(v) for row in rows for k, v in row.items() if k.startswith(("pruning", "grad")) and v]


def assert_logs_finite(log_dir: str) -> None:
    values = logged_pruning_values(log_dir)
    assert values and all(math.isfinite(v) for v in values), values


def dense_prunable_count(module: nn.Module) -> int:
    """The default prunable weights' number (of a freshly built, unpruned model)."""
    return sum(w.numel() for w in default_prunable(module).values())


def measured_sparsity(module: nn.Module, dense_count: int) -> float:
    """Zero (or removed) default prunable weights against their number before pruning: what ``cb.sparsity`` must
    say, counted here from the weights themselves."""
    return 1 - sum(int(w.count_nonzero()) for w in default_prunable(module).values()) / dense_count


def assert_export_computes_the_same(
    pruning: RealTimePruningCallback,
    module: nn.Module,
    batch: tuple,
    forward: Callable[[nn.Module, tuple], torch.Tensor],
    dense_params: int,
) -> nn.Module:
    """The export is smaller (structured: fewer parameters; unstructured: fewer non-zeros, by the cut) and computes
    what the pruned model computes on ``batch``."""
    exported = pruning.export(module)
    if pruning.mode == "structured":
        assert sum(p.numel() for p in exported.parameters()) < dense_params
    else:  # single weights: the export keeps its shapes; what a sparse format stores, its non-zeros, shrank
        removed = dense_params - sum(int(p.count_nonzero()) for p in exported.parameters())
        assert removed >= pruning.sparsity * pruning.pruner.initial_weights - 1
    module.eval()
    exported.eval()
    with torch.no_grad():
        expected, got = forward(module, batch).float(), forward(exported, batch).float()
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4), (got - expected).abs().max()
    return exported


def coarsest_step(pruning: RealTimePruningCallback) -> float:
    """Structured mode's resolution at its coarsest: the largest share of the budget one unit of one group holds (a
    cut lands on the target within one such step)."""
    groups, _ = pruning.pruner.groups()
    weights, pruned = pruning.pruner.prunable_now(), pruning.masks.pruned
    macs = pruning.pruner.entry_macs if pruning.budget == "flops" else None
    largest = 0.0
    for group in groups:
        cost = structured.channel_cost(group, weights, pruned, entry_costs=macs)
        units = group.unit_of()
        per_unit = torch.zeros(int(units.max()) + 1, dtype=torch.float64).index_add_(0, units, cost)
        largest = max(largest, float(per_unit.max()))
    return largest / pruning.pruner.initial_units
