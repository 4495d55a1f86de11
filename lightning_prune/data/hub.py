"""Loading the Hub datasets, or local Parquet copies in the Hub schema, with errors that say what to do."""

from collections.abc import Sequence
from pathlib import Path

import datasets
import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Subset

SPLITS = ("train", "test")


class DataSourceError(RuntimeError):
    """The dataset could not be loaded: a missing folder or file, a wrong schema, or an unreachable Hub."""


def _parquet_files(data_dir: Path, split: str) -> list[str]:
    files = sorted(str(p) for p in data_dir.glob(f"{split}-*.parquet"))
    if not files:
        found = sorted(p.name for p in data_dir.iterdir())[:10]
        raise DataSourceError(
            f"data_dir={str(data_dir)!r} has no '{split}-*.parquet' file (found: {found or 'nothing'}). "
            "Expected the Hub layout: train-*.parquet and test-*.parquet."
        )
    return files


def _load_local(data_dir: str | Path) -> datasets.DatasetDict:
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataSourceError(f"data_dir={str(data_dir)!r} does not exist or is not a folder.")
    data_files = {split: _parquet_files(path, split) for split in SPLITS}
    return datasets.load_dataset("parquet", data_files=data_files)


def _load_hub(hub_name: str) -> datasets.DatasetDict:
    try:
        return datasets.load_dataset(hub_name)
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as err:
        raise DataSourceError(
            f"Could not load {hub_name!r} from the Hugging Face Hub ({type(err).__name__}: {err}). "
            "Without the Hub, pass a local copy in the Hub schema: --data.data_dir PATH "
            "(a folder with train-*.parquet and test-*.parquet)."
        ) from None


def load_splits(hub_name: str, data_dir: str | Path | None, columns: Sequence[str]) -> datasets.DatasetDict:
    """Load the train and test splits from ``data_dir`` (local Parquet) or, when it is None, from the Hub.

    Raises:
        DataSourceError: the folder or its files are missing, a column is missing, or the Hub cannot be reached.
    """
    splits = _load_hub(hub_name) if data_dir is None else _load_local(data_dir)
    source = hub_name if data_dir is None else f"data_dir={str(data_dir)!r}"
    for split in SPLITS:
        if split not in splits:
            raise DataSourceError(f"{source} has no {split!r} split.")
        missing = [c for c in columns if c not in splits[split].column_names]
        if missing:
            raise DataSourceError(
                f"The {split!r} split of {source} lacks the column(s) {missing}; it has {splits[split].column_names}. "
                f"The Hub schema of {hub_name!r} has {list(columns)}."
            )
    return splits


def images_to_tensor(split: datasets.Dataset, column: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode an Image column once into a uint8 (N, C, H, W) tensor; ``datasets`` caches the decoded arrays.

    A second run with the same data reads the cache instead of decoding every PNG again.
    """
    first = split[0][column]
    width, height = first.size
    channels = len(first.getbands())
    shape = (height, width, channels)
    features = datasets.Features(
        {"pixels": datasets.Array3D(shape=shape, dtype="uint8"), "label": datasets.Value("int64")}
    )

    def decode(batch: dict) -> dict:
        arrays = [np.asarray(img, dtype=np.uint8).reshape(shape) for img in batch[column]]
        return {"pixels": arrays, "label": batch["label"]}

    decoded = split.map(
        decode,
        batched=True,
        batch_size=1000,
        remove_columns=split.column_names,
        features=features,
        new_fingerprint=f"{split._fingerprint}-pixels-v1",
        desc="Decoding images",
    )
    # the numpy formatter widens integers to int64 unless told otherwise: 8x the memory
    pixels = torch.from_numpy(decoded.with_format("numpy", dtype=np.uint8)["pixels"][:])
    labels = torch.from_numpy(decoded.with_format("numpy")["label"][:])
    return pixels.permute(0, 3, 1, 2).contiguous(), labels.long()


DEFAULT_VAL_SIZE = 5000
# the share of a small training split that the default carves out instead of DEFAULT_VAL_SIZE examples
SMALL_SPLIT_FRACTION = 0.1


def validation_count(num_rows: int, val_size: int | float) -> tuple[int, str]:
    """How many of ``num_rows`` training rows go to validation, and a sentence saying how that was decided.

    ``val_size`` is a count (an int >= 0) or a fraction (a float in (0, 1)). The default count, 5000, takes 10% of a
    training split too small to give 5000 and keep as many for training.

    Example:
        >>> validation_count(60000, 5000)[0], validation_count(60000, 0.25)[0], validation_count(96, 5000)[0]
        (5000, 15000, 10)
    """
    if isinstance(val_size, float):
        count = max(1, round(val_size * num_rows))
        how = f"val_size={val_size} of {num_rows:,} rows"
    elif val_size == DEFAULT_VAL_SIZE and 2 * val_size > num_rows:
        count = max(1, round(SMALL_SPLIT_FRACTION * num_rows))
        how = f"the default val_size={DEFAULT_VAL_SIZE} would leave too little to train on: 10% instead"
    else:
        count, how = val_size, f"val_size={val_size}"
    if not 0 <= count < num_rows:
        raise ValueError(
            f"`val_size` must leave training rows: a count in [0, {num_rows}) or a fraction in (0, 1) for a train "
            f"split of {num_rows} rows, got {val_size}"
        )
    return count, f"validation: {count:,} of the {num_rows:,} training rows ({how})"


def train_val_indices(num_rows: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split of ``range(num_rows)`` into train and ``val_size`` validation indices."""
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed))
    return order[val_size:], order[:val_size]


class HubDataModule(L.LightningDataModule):
    """Shared plumbing of the reference DataModules: source, seeded validation split and loaders.

    Subclasses set ``hub_name`` and ``columns`` and implement :meth:`_build` which turns the loaded splits into
    torch datasets ``(train_full_for_training, train_full_for_evaluation, test)``; the first may augment, the
    second must not, and both index the same rows so the validation rows are carved from the second.
    """

    hub_name: str
    columns: tuple[str, ...]

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        val_size: int | float = DEFAULT_VAL_SIZE,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0, got {num_workers}")
        if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
            raise TypeError(f"`val_size` must be a count (int) or a fraction (float), got {val_size!r}")
        if (isinstance(val_size, int) and val_size < 0) or (isinstance(val_size, float) and not 0 < val_size < 1):
            raise ValueError(f"`val_size` must be a count >= 0 or a fraction in (0, 1), got {val_size}")
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def load(self) -> datasets.DatasetDict:
        return load_splits(self.hub_name, self.data_dir, self.columns)

    def prepare_data(self) -> None:
        # runs on one process: fills the datasets cache that every rank's setup() then reads
        self._build(self.load())

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_augmented, train_plain, self.test_set = self._build(self.load())
        count, said = validation_count(len(train_plain), self.val_size)
        rank_zero_info(f"{type(self).__name__}: {said}")
        train_idx, val_idx = train_val_indices(len(train_plain), count, self.seed)
        self.train_set = Subset(train_augmented, train_idx.tolist())
        self.val_set = Subset(train_plain, val_idx.tolist())

    def _build(self, splits: datasets.DatasetDict) -> tuple[Dataset, Dataset, Dataset]:
        raise NotImplementedError

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
