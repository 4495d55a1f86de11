"""IMDB reviews (``stanfordnlp/imdb``: text, label) as a LightningDataModule with a word-level tokenizer."""

from pathlib import Path

import datasets
import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer
from torch.utils.data import Dataset, TensorDataset

from lightning_prune.data.hub import DEFAULT_VAL_SIZE, HubDataModule
from lightning_prune.validation import check_choice

PAD_TOKEN, UNK_TOKEN = "[PAD]", "[UNK]"  # ids 0 and 1: the model's padding index is 0
TRUNCATION_SIDES = ("left", "right")


def train_tokenizer(texts: datasets.Dataset, vocab_size: int) -> Tokenizer:
    """A lower-casing word-level tokenizer over the ``text`` column, with ``[PAD]`` = 0 and ``[UNK]`` = 1."""
    tokenizer = Tokenizer(WordLevel(unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Replace("<br />", " "), normalizers.NFKC(), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = WordLevelTrainer(vocab_size=vocab_size, special_tokens=[PAD_TOKEN, UNK_TOKEN], show_progress=False)

    def batches():
        for start in range(0, len(texts), 1000):
            yield texts[start : start + 1000]["text"]

    tokenizer.train_from_iterator(batches(), trainer=trainer, length=len(texts))
    return tokenizer


class IMDBDataModule(HubDataModule):
    """IMDB sentiment: reviews tokenised to ``max_length`` ids (padded with 0) with their true lengths kept.

    The tokenizer is trained on the train split only and saved beside the ``datasets`` cache; the tokenised splits are
    cached by ``datasets``, so a second run does neither again. Batches are ``(tokens, lengths, label)``.

    Args:
        data_dir: Folder with ``train-*.parquet`` and ``test-*.parquet`` in the Hub schema; None loads the Hub.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        val_size: Training rows carved out (with ``seed``) for validation: a count, or a fraction in (0, 1); the
            default 5000 takes 10% of a split too small for it.
        seed: Seed of the train/validation split.
        vocab_size: Tokenizer vocabulary, special tokens included; the CLI passes it on to the model.
        max_length: Reviews are truncated to this many tokens.
        truncation_side: ``"left"`` keeps a long review's last ``max_length`` tokens, where its verdict usually is;
            ``"right"`` keeps its first. At 128 tokens the unpruned LSTM learns much sooner from the end: 82.2% against
            53.8% validation accuracy after 3 epochs (seed 0; docs/RESULTS.md, IMDB).
    """

    hub_name = "stanfordnlp/imdb"
    columns = ("text", "label")

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        val_size: int | float = DEFAULT_VAL_SIZE,
        seed: int = 0,
        vocab_size: int = 20000,
        max_length: int = 256,
        truncation_side: str = "left",
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, val_size, seed)
        if vocab_size < 3:
            raise ValueError(f"`vocab_size` must be >= 3 (two special tokens and a word), got {vocab_size}")
        if max_length < 1:
            raise ValueError(f"`max_length` must be >= 1, got {max_length}")
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.truncation_side = check_choice("truncation_side", truncation_side, TRUNCATION_SIDES)
        self.tokenizer: Tokenizer | None = None

    def _cached_tokenizer(self, train: datasets.Dataset) -> Tokenizer:
        cache = Path(datasets.config.HF_DATASETS_CACHE) / "lightning_prune"
        path = cache / f"imdb-wordlevel-{train._fingerprint}-{self.vocab_size}.json"
        if path.is_file():
            return Tokenizer.from_file(str(path))
        tokenizer = train_tokenizer(train, self.vocab_size)
        cache.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(path))
        return tokenizer

    def _tokenise(self, split: datasets.Dataset, tokenizer: Tokenizer, fingerprint: str) -> TensorDataset:
        tokenizer.enable_truncation(self.max_length, direction=self.truncation_side)
        tokenizer.enable_padding(pad_id=0, pad_token=PAD_TOKEN, length=self.max_length)
        features = datasets.Features(
            {
                "tokens": datasets.Sequence(datasets.Value("int32"), length=self.max_length),
                "length": datasets.Value("int32"),
                "label": datasets.Value("int64"),
            }
        )

        def encode(batch: dict) -> dict:
            encodings = tokenizer.encode_batch(batch["text"])
            return {
                "tokens": [e.ids for e in encodings],
                "length": [sum(e.attention_mask) for e in encodings],
                "label": batch["label"],
            }

        encoded = split.map(
            encode,
            batched=True,
            remove_columns=split.column_names,
            features=features,
            new_fingerprint=f"{split._fingerprint}-{fingerprint}-{self.max_length}-{self.truncation_side}-tokens-v1",
            desc="Tokenising",
        ).with_format("numpy")
        columns = ("tokens", "length", "label")
        return TensorDataset(*(torch.from_numpy(encoded[c][:]).long() for c in columns))

    def _build(self, splits: datasets.DatasetDict) -> tuple[Dataset, Dataset, Dataset]:
        self.tokenizer = self._cached_tokenizer(splits["train"])
        tag = f"{splits['train']._fingerprint}-{self.vocab_size}"
        train = self._tokenise(splits["train"], self.tokenizer, tag)
        return train, train, self._tokenise(splits["test"], self.tokenizer, tag)
