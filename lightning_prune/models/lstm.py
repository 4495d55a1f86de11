"""The IMDB reference network: embedding, a multi-layer LSTM, and a linear classifier on each review's last token."""

import torch
from torch import nn

PAD_INDEX = 0
# the example review's length: IMDBDataModule's default max_length, to which every review is padded, so that the MACs
# counted on the example are those of a training sample
EXAMPLE_LENGTH = 256


class LSTMClassifier(nn.Module):
    """Embedding (padding index 0) -> batch-first LSTM -> fc on the last layer's output at each sequence's last token.

    Args:
        vocab_size: Rows of the embedding table; token ids must be below it.
        embed_dim: Embedding width.
        hidden_size: LSTM hidden units per layer.
        num_layers: Stacked LSTM layers.
        num_classes: Number of output classes.
        dropout: Dropout between LSTM layers and before the classifier.

    Example:
        >>> model = LSTMClassifier(vocab_size=100, embed_dim=8, hidden_size=16)
        >>> tokens = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
        >>> model(tokens).shape
        torch.Size([2, 2])
        >>> torch.allclose(model.eval()(tokens), model(tokens, torch.tensor([3, 2])))
        True
    """

    def __init__(
        self,
        vocab_size: int = 20000,
        embed_dim: int = 128,
        hidden_size: int = 256,
        num_layers: int = 2,
        num_classes: int = 2,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_INDEX)
        self.lstm = nn.LSTM(
            embed_dim, hidden_size, num_layers=num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_size, num_classes)

    @property
    def example_input_array(self) -> torch.Tensor:
        """One review of :data:`EXAMPLE_LENGTH` tokens (no padding): what ``ClassificationModule`` declares, so that
        Lightning's model summary counts FLOPs."""
        vocab_size = self.embedding.num_embeddings
        return torch.full((1, EXAMPLE_LENGTH), min(1, vocab_size - 1), dtype=torch.long)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            lengths = (tokens != PAD_INDEX).sum(dim=1)
        # Batches are right-padded and the LSTM runs left to right, so its output at the last real token is the state a
        # packed sequence would end in. Packing is not used: with reviews of varied lengths a CPU training step was
        # 8.17x slower packed (bench/lstm_packing.py at 0d0c083, docs/BENCHMARKS.md); the padding costs far less.
        last = (lengths.to(tokens.device).clamp(min=1, max=tokens.shape[1]) - 1).long()
        outputs, _ = self.lstm(self.embedding(tokens))
        final = outputs[torch.arange(tokens.shape[0], device=tokens.device), last]
        return self.fc(self.dropout(final))
