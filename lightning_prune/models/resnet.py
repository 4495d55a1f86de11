"""ResNet-18 for 32x32 images: torchvision's network with the CIFAR stem."""

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


class CIFARResNet18(ResNet):
    """torchvision's ResNet-18 whose stem is a 3x3 stride-1 convolution without max-pool.

    The ImageNet stem (7x7 stride 2 + max-pool) would shrink a 32x32 image to 8x8 before the first block.

    Args:
        num_classes: Number of output classes.

    Example:
        >>> CIFARResNet18()(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()

    @property
    def example_input_array(self) -> torch.Tensor:
        """One CIFAR-10 image: what ``ClassificationModule`` declares, so that Lightning's summary counts FLOPs."""
        return torch.zeros(1, 3, 32, 32)
