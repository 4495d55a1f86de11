"""The reference networks and ClassificationModule: shapes, gradients, logged names."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import ClassificationModule
from lightning_prune.models import MNISTCNN, CIFARResNet18, LSTMClassifier


@pytest.mark.parametrize(
    ("model", "inputs", "classes"),
    [
        (MNISTCNN(), (torch.randn(4, 1, 28, 28),), 10),
        (CIFARResNet18(), (torch.randn(4, 3, 32, 32),), 10),
        (LSTMClassifier(vocab_size=50, embed_dim=8, hidden_size=16), (torch.randint(1, 50, (4, 12)),), 2),
    ],
    ids=["mnist_cnn", "resnet18", "lstm"],
)
def test_forward_and_backward_reach_every_parameter(model, inputs, classes):
    logits = model(*inputs)
    assert logits.shape == (4, classes)
    logits.sum().backward()
    without_grad = [n for n, p in model.named_parameters() if p.grad is None]
    # the padding row of the embedding gets a zero gradient, not None
    assert without_grad == []


def test_mnist_cnn_matches_the_plan():
    model = MNISTCNN()
    assert (model.conv1.in_channels, model.conv1.out_channels, model.conv1.kernel_size) == (1, 32, (3, 3))
    assert (model.conv2.out_channels, model.fc1.in_features, model.fc1.out_features) == (64, 9216, 128)
    assert 1_150_000 < sum(p.numel() for p in model.parameters()) < 1_250_000


def test_resnet18_has_the_cifar_stem():
    model = CIFARResNet18(num_classes=7)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model.fc.out_features == 7
    # the stem keeps 32x32: layer1 sees full resolution
    features = model.layer1(model.relu(model.bn1(model.conv1(torch.zeros(1, 3, 32, 32)))))
    assert features.shape[-2:] == (32, 32)


def test_lstm_ignores_padding_and_accepts_explicit_lengths():
    torch.manual_seed(0)
    model = LSTMClassifier(vocab_size=30, embed_dim=8, hidden_size=16, num_layers=2).eval()
    short = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[3, 4, 5, 0, 0, 0]])
    assert torch.allclose(model(short), model(padded), atol=1e-6)
    assert torch.allclose(model(padded), model(padded, torch.tensor([3])), atol=1e-6)
    assert model.lstm.num_layers == 2 and model.embedding.padding_idx == 0


def test_classification_module_trains_and_logs_the_documented_names(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    module = ClassificationModule(MNISTCNN(num_classes=2), lr=1e-3)
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader, loader)
    logged = set(trainer.callback_metrics)
    assert {"train_loss", "train_loss_step", "train_loss_epoch", "train_acc", "val_loss", "val_acc"} <= logged
    trainer.test(module, loader, verbose=False)
    assert {"test_loss", "test_acc"} <= set(trainer.callback_metrics)
    assert module.num_classes == 2 and module.hparams.lr == 1e-3


def test_classification_module_rejects_bad_arguments():
    with pytest.raises(ValueError, match="lr"):
        ClassificationModule(MNISTCNN(), lr=0)
    with pytest.raises(ValueError, match="num_classes"):
        ClassificationModule(torch.nn.Conv2d(1, 1, 1))
