"""The callback dropped into models nobody here wrote, in both modes: torchvision families, PyTorch's transformer and
RNN layers, Lightning's own demo Transformer, a module without ``forward``, manual optimisation and bf16 on the CPU.

Each case trains four tiny steps (epoch 0 cuts half the prunable weights, or in structured mode with
``budget="flops"`` half their MACs; epoch 1 recovers; structured mode removes the cut channels at its end) and checks
what a user relies on: training completes, the target is reached (structured: within one channel's share), cut weights
stay zero before every step, ``cb.sparsity`` is what the weights show over every default prunable weight, nothing
non-finite is logged, and the export is smaller and computes what the pruned model computes.
"""

import warnings

import lightning as L
import pytest
import torch
import torchvision
from lightning.pytorch.demos import LightningTransformer
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import RealTimePruningCallback

from helpers import (
    Classifier,
    ZeroChecker,
    assert_export_computes_the_same,
    assert_logs_finite,
    coarsest_step,
    dense_prunable_count,
    measured_sparsity,
)

TARGET = 0.5


class NoForward(Classifier):
    """No ``forward``: ``training_step`` calls the network itself."""

    forward = nn.Module.forward  # the base class's, which raises: there is none

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.backbone(x), y)


class Manual(Classifier):
    """Manual optimisation: ``training_step`` steps the optimizer itself."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__(backbone)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        *inputs, target = batch
        loss = F.cross_entropy(self(*inputs), target)
        self.manual_backward(loss)
        optimizer.step()
        return loss


class TextClassifier(nn.Module):
    """Embedding + a recurrent or transformer encoder + mean pooling + a Linear head."""

    def __init__(self, kind: str, vocab: int = 50, width: int = 16) -> None:
        super().__init__()
        self.kind = kind
        self.embedding = nn.Embedding(vocab, width)
        if kind == "transformer":
            layer = nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=32, batch_first=True, dropout=0.0)
            self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        elif kind == "gru":
            self.encoder = nn.GRU(width, width, num_layers=2, batch_first=True)
        else:
            self.encoder = nn.LSTM(width, width, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(width * (2 if kind == "bilstm" else 1), 2)

    def forward(self, tokens):
        hidden = self.embedding(tokens)
        hidden = self.encoder(hidden) if self.kind == "transformer" else self.encoder(hidden)[0]
        return self.head(hidden.mean(dim=1))


class DemoTransformer(LightningTransformer):
    """Lightning's demo as shipped (``forward(inputs, target)``, nothing logged), with a small vocabulary and no
    download of its data set (this machine has no network; the test brings its own tokens)."""

    def __init__(self) -> None:
        super().__init__(vocab_size=40)
        self.model = type(self.model)(vocab_size=40, ninp=16, nhead=2, nhid=32, nlayers=1, dropout=0.0)

    def prepare_data(self) -> None:
        pass


class LoggedDemoTransformer(DemoTransformer):
    """The demo plus logging: paced by the logged ``train_loss`` instead."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss)
        return loss


def images(count: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(count, 3, 32, 32, generator=generator), torch.randint(0, 10, (count,)))
    return DataLoader(data, batch_size=4)


def tokens(count: int = 8, classes: int = 2, length: int = 12, vocab: int = 50, target_is_text: bool = False):
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(1, vocab, (count, length), generator=generator)
    target = torch.randint(1, vocab, (count, length), generator=generator) if target_is_text else text[:, 0] % classes
    return DataLoader(TensorDataset(text, target), batch_size=4)


def vit() -> nn.Module:
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                                mlp_dim=32, num_classes=10)  # fmt: skip


BF16 = {"precision": "bf16-mixed"}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3072, 32), nn.ReLU(), nn.Linear(32, 10))


# name -> (module, data, Trainer settings)
CASES = {
    "resnet18": (lambda: Classifier(torchvision.models.resnet18(num_classes=10)), images, {}),
    "mobilenet_v3_small": (lambda: Classifier(torchvision.models.mobilenet_v3_small(num_classes=10)), images, {}),
    "efficientnet_b0": (lambda: Classifier(torchvision.models.efficientnet_b0(num_classes=10)), images, {}),
    "shufflenet_v2_x0_5": (lambda: Classifier(torchvision.models.shufflenet_v2_x0_5(num_classes=10)), images, {}),
    "vit": (lambda: Classifier(vit()), images, {}),
    "transformer_encoder": (lambda: Classifier(TextClassifier("transformer")), tokens, {}),
    "demo_transformer": (DemoTransformer, lambda: tokens(length=8, vocab=40, target_is_text=True), {}),
    "demo_transformer_logged": (LoggedDemoTransformer, lambda: tokens(length=8, vocab=40, target_is_text=True), {}),
    "gru": (lambda: Classifier(TextClassifier("gru")), tokens, {}),
    "bilstm": (lambda: Classifier(TextClassifier("bilstm")), tokens, {}),
    "no_forward": (lambda: NoForward(mlp()), images, {}),
    "manual_optimisation": (lambda: Manual(torchvision.models.resnet18(num_classes=10)), images, {}),
    "bf16_mixed": (lambda: Classifier(torchvision.models.resnet18(num_classes=10)), images, BF16),
}


def call(model: nn.Module, batch) -> torch.Tensor:
    *inputs, target = batch
    if isinstance(model, LightningTransformer):
        return model(*inputs, target)
    if isinstance(model, NoForward):
        return model.backbone(*inputs)
    return model(*inputs)


# structured mode leaves the demo's embedding stream out (a fixed positional encoding is added to it): its attention
# projections hold most prunable weights, so the target is out of reach, which setup says
OUT_OF_REACH = {"demo_transformer", "demo_transformer_logged"}


@pytest.mark.parametrize("mode", ["unstructured", "structured", "structured_flops"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_foreign_model_is_pruned_to_the_target_and_exports(case, mode, tmp_path):
    build, data, settings = CASES[case]
    L.seed_everything(0)
    module, loader = build(), data()
    monitor = "train_loss" if case == "demo_transformer_logged" else None
    mode, _, budget = mode.partition("_")
    pruning = RealTimePruningCallback(mode=mode, target_sparsity=TARGET, initial_ratio=0.3, max_ratio=0.5,
                                      monitor=monitor, end_epoch=1, budget=budget or "weights")  # fmt: skip
    checker = ZeroChecker(pruning)
    logger = CSVLogger(tmp_path, name=case)
    trainer = L.Trainer(max_epochs=2, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1, log_every_n_steps=1,
                        callbacks=[pruning, checker], **settings)  # fmt: skip
    dense = build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, loader)

    # cb.sparsity counts every default prunable weight, in both modes (it once left out what structured mode did)
    assert pruning.sparsity == pytest.approx(measured_sparsity(module, dense_prunable_count(dense)), abs=1e-9)
    # the target counts the budget: weights, or with budget="flops" the MACs they stand for
    reached = pruning.pruner.sparsity_at(pruning.pruner.remaining())
    if mode == "structured" and case in OUT_OF_REACH:
        assert any("target_sparsity=0.5 cannot be reached" in str(w.message) for w in caught)
        assert pruning.pruner.resolution() == 1.0 and reached < TARGET  # it went as far as it can
    else:
        resolution = coarsest_step(pruning) if mode == "structured" else 1e-3
        assert reached == pytest.approx(TARGET, abs=max(resolution, 1e-3)), pruning.history
    assert checker.checked > 0
    assert_logs_finite(logger.log_dir)
    dense_params = sum(p.numel() for p in dense.parameters())
    assert_export_computes_the_same(pruning, module, next(iter(loader)), call, dense_params)
