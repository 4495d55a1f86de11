"""MNIST (``ylecun/mnist``: image, label) as a LightningDataModule."""

from lightning_prune.data.images import ImageDataModule


class MNISTDataModule(ImageDataModule):
    """MNIST digits, normalised with the training set's statistics (mean 0.1307, std 0.3081).

    Args:
        data_dir: Folder with ``train-*.parquet`` and ``test-*.parquet`` in the Hub schema; None loads the Hub.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        val_size: Training rows carved out (with ``seed``) for validation: a count, or a fraction in (0, 1); the
            default 5000 takes 10% of a split too small for it.
        seed: Seed of the train/validation split.

    Example:
        >>> dm = MNISTDataModule(data_dir="/no/such/folder")
        >>> dm.setup("fit")
        Traceback (most recent call last):
        ...
        lightning_prune.data.hub.DataSourceError: data_dir='/no/such/folder' does not exist or is not a folder.
    """

    hub_name = "ylecun/mnist"
    image_column = "image"
    mean = (0.1307,)
    std = (0.3081,)
