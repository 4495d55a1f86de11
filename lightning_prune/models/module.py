"""ClassificationModule: any backbone + cross-entropy + Adam, with torchmetrics accuracy and the logged names."""

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_prune.checkpoints import match_architecture
from lightning_prune.layers import classifier_name


def _backbone_config_given() -> bool:
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # a Lightning without the CLI's instantiator context: keep the plain behaviour
        return False
    given = _given_hyperparameters.get()
    return isinstance(given, dict) and isinstance(given.get("backbone"), dict)


def _infer_num_classes(backbone: nn.Module) -> int:
    classifier = classifier_name(backbone)
    if classifier is None:
        raise ValueError(
            "ClassificationModule could not infer `num_classes`: the backbone has no nn.Linear layer. "
            "Pass `num_classes` explicitly."
        )
    return backbone.get_submodule(classifier).out_features


class ClassificationModule(L.LightningModule):
    """Trains a classification backbone with cross-entropy.

    A batch is a tuple ``(*inputs, target)`` (the package's convention, ``lightning_prune.inputs``): the inputs go
    to ``backbone(*inputs)``, so image batches ``(x, y)`` and text batches ``(tokens, lengths, y)`` both work. Logs
    ``train_loss`` (step and epoch), ``train_acc``, ``val_loss``, ``val_acc``, ``test_loss`` and ``test_acc``. The
    backbone's ``example_input_array`` (the reference networks have one) becomes the module's, so that Lightning's model
    summary counts FLOPs and structured pruning checks the model at setup.

    Args:
        backbone: The network; its output is the logits.
        lr: Adam's learning rate (used unless the CLI is given another optimizer).
        num_classes: Classes for the accuracy metric; by default the output width of the backbone's last nn.Linear.

    Example:
        >>> from lightning_prune.models import MNISTCNN
        >>> module = ClassificationModule(MNISTCNN(), lr=1e-3)
        >>> module.hparams.lr, module.num_classes
        (0.001, 10)
    """

    def __init__(self, backbone: nn.Module, lr: float = 1e-3, num_classes: int | None = None) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"`lr` must be > 0, got {lr}")
        # an nn.Module does not belong in hparams; a backbone *config* (LightningCLI passes the class path and
        # init args) does: it makes the checkpoint self-describing for load_from_checkpoint and `export`
        self.save_hyperparameters(ignore=[] if _backbone_config_given() else ["backbone"])
        self.backbone = backbone
        # Lightning's model summary counts FLOPs on it, and the pruning callback traces it at setup
        self.example_input_array = getattr(backbone, "example_input_array", None)
        self.num_classes = num_classes if num_classes is not None else _infer_num_classes(backbone)
        self.loss_fn = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(self.num_classes, average="micro")

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.backbone(*inputs)

    def _shared_step(self, batch: tuple, stage: str, accuracy: MulticlassAccuracy) -> torch.Tensor:
        *inputs, target = batch
        logits = self(*inputs)
        loss = self.loss_fn(logits, target)
        accuracy(logits, target)
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(target))
        self.log(f"{stage}_acc", accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(target))
        return loss

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train", self.train_acc)

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        self._shared_step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple, batch_idx: int) -> None:
        self._shared_step(batch, "test", self.test_acc)

    def predict_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        *inputs, _ = batch
        return self(*inputs).argmax(dim=-1)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # a checkpoint of a structurally pruned model holds smaller layers: take their shapes before loading
        match_architecture(self, checkpoint["state_dict"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
