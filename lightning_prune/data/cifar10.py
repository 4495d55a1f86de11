"""CIFAR-10 (``uoft-cs/cifar10``: img, label) as a LightningDataModule."""

from torchvision.transforms import v2

from lightning_prune.data.images import ImageDataModule


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 with the standard augmentation on train (4-pixel padded random crop, horizontal flip).

    Args:
        data_dir: Folder with ``train-*.parquet`` and ``test-*.parquet`` in the Hub schema; None loads the Hub.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        val_size: Training rows carved out (with ``seed``) for validation: a count, or a fraction in (0, 1); the
            default 5000 takes 10% of a split too small for it.
        seed: Seed of the train/validation split.
    """

    hub_name = "uoft-cs/cifar10"
    image_column = "img"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def _augmentation(self) -> list:
        return [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
