"""The reference tasks declare an example input, so Lightning's model summary counts their FLOPs (it printed
"Total FLOPs: 0" without one) and structured pruning checks the model at setup."""

import pytest
import torch
from lightning.pytorch.utilities.model_summary import ModelSummary

from lightning_prune import ClassificationModule
from lightning_prune.models import MNISTCNN, CIFARResNet18, LSTMClassifier


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "backbone",
    [MNISTCNN, CIFARResNet18, lambda: LSTMClassifier(vocab_size=50, embed_dim=8, hidden_size=16)],
    ids=["mnist_cnn", "cifar_resnet18", "imdb_lstm"],
)
def test_the_model_summary_counts_the_flops_of_each_task(backbone):
    module = ClassificationModule(backbone())
    assert module.example_input_array is not None
    with torch.no_grad():
        assert module(module.example_input_array).shape == (1, module.num_classes)
    assert ModelSummary(module, max_depth=1).total_flops > 0
