"""Tiny datasets in the Hub schema (never the network, never ../shared/data) and helpers shared by the tests."""

from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

WORDS = "good bad great awful movie film plot acting boring brilliant the a was and it".split()


def _write(folder: Path, split: str, rows: dict, features: datasets.Features) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))


def make_image_data(folder: Path, column: str, size: int, mode: str, rows: dict[str, int], seed: int = 0) -> Path:
    """Random images whose brightness depends on the label, so a network can learn something from them."""
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    features = datasets.Features(
        {column: datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    for split, count in rows.items():
        labels = rng.integers(0, 10, size=count)
        images = []
        for label in labels:
            pixels = rng.integers(0, 100, size=(size, size, channels)) + 15 * label
            images.append(
                Image.fromarray(pixels.astype(np.uint8).squeeze(-1) if channels == 1 else pixels.astype(np.uint8), mode)
            )
        _write(folder, split, {column: images, "label": labels.tolist()}, features)
    return folder


def make_text_data(folder: Path, rows: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    for split, count in rows.items():
        texts = [" ".join(rng.choice(WORDS, size=rng.integers(3, 40))) + " <br /> End." for _ in range(count)]
        _write(folder, split, {"text": texts, "label": rng.integers(0, 2, size=count).tolist()}, features)
    return folder


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory) -> Path:
    return make_image_data(tmp_path_factory.mktemp("mnist"), "image", 28, "L", {"train": 96, "test": 32})


@pytest.fixture(scope="session")
def tiny_cifar10(tmp_path_factory) -> Path:
    return make_image_data(tmp_path_factory.mktemp("cifar10"), "img", 32, "RGB", {"train": 96, "test": 32})


@pytest.fixture(scope="session")
def tiny_imdb(tmp_path_factory) -> Path:
    return make_text_data(tmp_path_factory.mktemp("imdb"), {"train": 96, "test": 32})
