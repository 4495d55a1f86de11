"""Training step of the IMDB LSTM over packed sequences against over the padding, side by side.

LSTMClassifier reads the LSTM's output at each review's last token instead of packing the batch (commit 91301ab).
This measures why: one training step (forward, backward, Adam) of the same weights on the same batch, once over a
packed sequence (the way the model ran before) and once as the model runs now, alternating, on reviews of varied
lengths as real IMDB batches have (bench/overhead.py's reviews are all full length, where packing costs nothing extra:
that is how its figures missed this). It also checks that both give the same outputs.

    python bench/lstm_packing.py --threads 2 --rounds 5
"""

import argparse
import statistics
import time

import torch
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from lightning_prune.models import LSTMClassifier

from common import record, table


def packed_forward(model: LSTMClassifier, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The classifier as it ran before 91301ab: the LSTM over a packed batch, fc on the last layer's final state."""
    packed = pack_padded_sequence(model.embedding(tokens), lengths, batch_first=True, enforce_sorted=False)
    _, (hidden, _) = model.lstm(packed)
    return model.fc(model.dropout(hidden[-1]))


def reviews(batch: int, tokens: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded batches whose lengths spread from a tenth of ``tokens`` to all of it."""
    lengths = torch.randint(max(1, tokens // 10), tokens + 1, (batch,), generator=generator)
    ids = torch.randint(1, 20000, (batch, tokens), generator=generator)
    ids[torch.arange(tokens) >= lengths[:, None]] = 0
    return ids, lengths


def step_seconds(model: LSTMClassifier, optimizer: torch.optim.Optimizer, forward, batch) -> float:
    tokens, lengths = batch
    start = time.perf_counter()
    loss = F.cross_entropy(forward(tokens, lengths), torch.zeros(len(tokens), dtype=torch.long))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="alternating measurements of each way")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--hidden-size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LSTMClassifier(hidden_size=args.hidden_size)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    batch = reviews(args.batch, args.tokens, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.eval()
        difference = (packed_forward(model, *batch) - model(*batch)).abs().max().item()
        model.train()
    ways = {"packed (before 91301ab)": lambda t, n: packed_forward(model, t, n), "over the padding (now)": model}
    times = {name: [] for name in ways}
    step_seconds(model, optimizer, model, batch)  # warm-up
    for _ in range(args.rounds):
        for name, forward in ways.items():
            times[name].append(step_seconds(model, optimizer, forward, batch))
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    slowest = medians["packed (before 91301ab)"]
    rows = [[name, f"{1000 * median:.0f}", f"{slowest / median:.2f}x"] for name, median in medians.items()]
    body = (
        f"LSTMClassifier(hidden_size={args.hidden_size}), batch {args.batch} x {args.tokens} tokens, lengths spread "
        f"from {max(1, args.tokens // 10)} to {args.tokens}; one training step (forward, backward, Adam), median of "
        f"{args.rounds} alternating measurements; outputs of the two ways differ by at most {difference:.1e} (eval)."
        "\n\n" + table(["way", "ms/step (median)", "speed-up over packed"], rows)
    )
    record("LSTM training step: packed against over the padding", body)


if __name__ == "__main__":
    main()
