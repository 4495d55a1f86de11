"""Small LightningModules and data used by the callback tests (top level, so DDP spawn can pickle them)."""

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


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
