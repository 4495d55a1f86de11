"""The DataModules: right shapes and dtypes from tiny Hub-schema Parquet, and clear errors for bad input."""

import logging
from pathlib import Path

import datasets
import pytest
import torch

from lightning_prune import CIFAR10DataModule, IMDBDataModule, MNISTDataModule
from lightning_prune.data import DataSourceError


def first_train_batch(dm):
    dm.prepare_data()
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


@pytest.mark.parametrize(
    ("datamodule_class", "fixture", "shape"),
    [(MNISTDataModule, "tiny_mnist", (1, 28, 28)), (CIFAR10DataModule, "tiny_cifar10", (3, 32, 32))],
)
def test_image_batches_are_normalised_float_images(datamodule_class, fixture, shape, request):
    dm = datamodule_class(data_dir=str(request.getfixturevalue(fixture)), batch_size=8, val_size=16)
    images, labels = first_train_batch(dm)
    assert images.shape == (8, *shape)
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.shape == (8,)
    # real pixel content, normalised: not a constant image (an integer-widening bug once made every pixel 0)
    assert images.std() > 0.1
    assert len(dm.train_set) == 80 and len(dm.val_set) == 16 and len(dm.test_set) == 32


def test_validation_split_is_seeded_and_disjoint(tiny_mnist):
    def split(seed):
        dm = MNISTDataModule(data_dir=str(tiny_mnist), val_size=16, seed=seed)
        dm.setup("fit")
        return set(dm.train_set.indices), set(dm.val_set.indices)

    train, val = split(0)
    assert not train & val and len(train | val) == 96
    assert split(0) == (train, val)
    assert split(1) != (train, val)


def test_cifar_augments_train_but_not_validation(tiny_cifar10):
    dm = CIFAR10DataModule(data_dir=str(tiny_cifar10), val_size=16)
    dm.setup("fit")
    torch.manual_seed(0)
    train_views = [dm.train_set[0][0] for _ in range(4)]
    val_views = [dm.val_set[0][0] for _ in range(2)]
    assert any(not torch.equal(train_views[0], v) for v in train_views[1:])
    assert torch.equal(val_views[0], val_views[1])


def test_imdb_batches_hold_tokens_lengths_and_labels(tiny_imdb):
    dm = IMDBDataModule(data_dir=str(tiny_imdb), batch_size=8, val_size=16, vocab_size=50, max_length=32)
    tokens, lengths, labels = first_train_batch(dm)
    assert tokens.shape == (8, 32) and tokens.dtype == torch.int64
    assert lengths.shape == (8,) and lengths.dtype == torch.int64
    assert labels.dtype == torch.int64
    assert int(tokens.max()) < 50
    for row, length in zip(tokens, lengths, strict=True):
        assert (row[:length] != 0).all() and (row[length:] == 0).all()
    # "<br />" is markup, not a word of the vocabulary
    assert not any("<" in token for token in dm.tokenizer.get_vocab())


@pytest.mark.parametrize("side", ["left", "right"])
def test_imdb_truncation_keeps_the_end_or_the_start_of_a_long_review(tiny_imdb, side):
    dm = IMDBDataModule(data_dir=str(tiny_imdb), val_size=16, vocab_size=50, max_length=3, truncation_side=side)
    dm.setup("test")
    dm.tokenizer.no_truncation()
    dm.tokenizer.no_padding()
    whole = dm.tokenizer.encode(dm.load()["test"][0]["text"]).ids
    assert len(whole) > 3
    kept = whole[-3:] if side == "left" else whole[:3]
    assert dm.test_set[0][0].tolist() == kept


def test_imdb_unknown_truncation_side_is_named(tiny_imdb):
    with pytest.raises(ValueError, match="truncation_side"):
        IMDBDataModule(data_dir=str(tiny_imdb), truncation_side="end")


def test_imdb_second_setup_reuses_the_cached_tokenizer_and_tokens(tiny_imdb, monkeypatch):
    IMDBDataModule(data_dir=str(tiny_imdb), val_size=16, vocab_size=40, max_length=16).setup("fit")
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    before = {path: path.stat().st_mtime_ns for path in cache.rglob("*") if path.is_file()}

    def no_training(*args, **kwargs):
        raise AssertionError("the tokenizer was trained again")

    monkeypatch.setattr("lightning_prune.data.imdb.train_tokenizer", no_training)
    IMDBDataModule(data_dir=str(tiny_imdb), val_size=16, vocab_size=40, max_length=16).setup("fit")
    after = {path: path.stat().st_mtime_ns for path in cache.rglob("*") if path.is_file()}
    assert after == before, "the second setup wrote to the cache instead of reading it"


def test_missing_data_dir_is_named(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        MNISTDataModule(data_dir=str(tmp_path / "nope")).setup("fit")


def test_data_dir_without_parquet_says_what_it_expects(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataSourceError, match=r"no 'train-\*\.parquet'.*readme\.txt"):
        MNISTDataModule(data_dir=str(tmp_path)).setup("fit")


def test_missing_column_is_named(tiny_mnist):
    # MNIST files handed to the CIFAR module: its image column is "img", not "image"
    with pytest.raises(DataSourceError, match=r"lacks the column\(s\) \['img'\]"):
        CIFAR10DataModule(data_dir=str(tiny_mnist), val_size=16).setup("fit")


def test_unreachable_hub_points_to_data_dir():
    # conftest sets HF_DATASETS_OFFLINE=1: the Hub is unreachable and the failure must be immediate
    with pytest.raises(DataSourceError, match=r"--data\.data_dir"):
        MNISTDataModule().setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"batch_size": 0}, "batch_size"), ({"num_workers": -1}, "num_workers"), ({"val_size": -5}, "val_size")],
)
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MNISTDataModule(**kwargs)


def test_val_size_larger_than_train_is_rejected(tiny_mnist):
    with pytest.raises(ValueError, match="val_size"):
        MNISTDataModule(data_dir=str(tiny_mnist), val_size=500).setup("fit")


def test_val_size_is_a_count_or_a_fraction_and_the_default_fits_a_small_split(tiny_mnist, caplog):
    with caplog.at_level(logging.INFO):
        small = MNISTDataModule(data_dir=str(tiny_mnist))  # 96 training rows: 5000 cannot be carved out
        small.setup("fit")
    assert (len(small.train_set), len(small.val_set)) == (86, 10)
    assert "validation: 10 of the 96 training rows (the default val_size=5000" in caplog.text
    quarter = MNISTDataModule(data_dir=str(tiny_mnist), val_size=0.25)
    quarter.setup("fit")
    assert (len(quarter.train_set), len(quarter.val_set)) == (72, 24)
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="val_size"):
            MNISTDataModule(val_size=bad)
    with pytest.raises(TypeError, match="val_size"):
        MNISTDataModule(val_size="0.1")


def test_a_tiny_data_set_trains_with_the_default_val_size(tiny_mnist, tmp_path):
    import lightning as L

    from lightning_prune import ClassificationModule
    from lightning_prune.models import MNISTCNN

    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path, enable_model_summary=False)  # fmt: skip
    trainer.fit(ClassificationModule(MNISTCNN()), MNISTDataModule(data_dir=str(tiny_mnist)))
    assert "val_acc" in trainer.callback_metrics
