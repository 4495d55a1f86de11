"""Image DataModules share one shape: decode once to uint8, normalise (and augment) per sample."""

from collections.abc import Callable

import datasets
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lightning_prune.data.hub import HubDataModule, images_to_tensor


class ImageTensorDataset(Dataset):
    """``(transform(image), label)`` pairs over a uint8 (N, C, H, W) tensor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.labels[index]


class ImageDataModule(HubDataModule):
    """Base of the image tasks: ``image_column`` holds HF Images, ``label`` the class."""

    image_column: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.image_column, "label")

    def _augmentation(self) -> list:
        return []

    def _build(self, splits: datasets.DatasetDict) -> tuple[Dataset, Dataset, Dataset]:
        normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        plain = v2.Compose(normalise)
        augmented = v2.Compose(self._augmentation() + normalise)
        train_images, train_labels = images_to_tensor(splits["train"], self.image_column)
        test_images, test_labels = images_to_tensor(splits["test"], self.image_column)
        return (
            ImageTensorDataset(train_images, train_labels, augmented),
            ImageTensorDataset(train_images, train_labels, plain),
            ImageTensorDataset(test_images, test_labels, plain),
        )
