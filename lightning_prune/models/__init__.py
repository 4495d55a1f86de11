"""Reference networks and the LightningModule that trains them."""

from lightning_prune.models.cnn import MNISTCNN
from lightning_prune.models.lstm import LSTMClassifier
from lightning_prune.models.module import ClassificationModule
from lightning_prune.models.resnet import CIFARResNet18

__all__ = ["CIFARResNet18", "ClassificationModule", "LSTMClassifier", "MNISTCNN"]
