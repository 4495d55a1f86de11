"""How the callback's own cost grows with model size (1M to 100M prunable weights), next to a training step.

For MLPs of growing width it times, in one process: a plain training step (forward, backward, Adam), the callback's
per-step work (mask the gradients, fold them into the running saliency, the gradient norm, re-apply the masks), and
one pruning interval (global selection of 10% of the remaining weights and the cut, with Adam's state). It also
reports the callback's memory: its per-weight buffers (saliency, masks) in bytes per prunable weight.

    python bench/scaling.py --sizes 1 4 16 64 100
"""

import argparse
import statistics
import time

import torch
from torch import nn

from lightning_prune.importance import Saliency
from lightning_prune.layers import prunable_weights
from lightning_prune.masks import PruningMasks

from common import record, table


def mlp(millions: float) -> nn.Module:
    """Four hidden layers of equal width holding about ``millions`` M prunable weights (the classifier is small)."""
    width = int((millions * 1e6 / 3) ** 0.5)
    return nn.Sequential(
        nn.Linear(256, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10),
    )  # fmt: skip


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(millions: float, batch: int, repeats: int) -> list:
    torch.manual_seed(0)
    model = mlp(millions)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 256), torch.randint(0, 10, (batch,))

    def step():
        optimizer.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(2):
        step()  # Adam state exists
    weights = prunable_weights(model)
    masks, saliency = PruningMasks(weights), Saliency(weights, "taylor", 0.99)
    trained = list(model.parameters())
    masks.cut(masks.select(saliency.scores(), sum(w.numel() for w in weights.values()) // 2, 0.02), [optimizer])
    masks.refresh()

    def callback_step():
        masks.mask_gradients()
        saliency.update()
        torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in trained])))
        masks.apply()

    def interval():
        remaining = sum(int((~p).sum()) for p in masks.pruned.values())
        masks.cut(masks.select(saliency.scores(), remaining // 10, 0.02), [optimizer])
        masks.undo_last_cut()  # keep the size the same for the next repeat
        masks.refresh()

    step_ms = timed(step, repeats)
    hooks_ms = timed(callback_step, repeats)
    interval_ms = timed(interval, max(1, repeats // 3))
    count = sum(w.numel() for w in weights.values())
    buffers = sum(t.numel() * t.element_size() for t in saliency.running.values())
    buffers += sum(t.numel() * t.element_size() for t in masks.pruned.values())
    buffers += sum(t.numel() * t.element_size() for t in masks._keep)
    return [
        f"{count / 1e6:.1f}M", f"{step_ms:.1f}", f"{hooks_ms:.2f}", f"{100 * hooks_ms / step_ms:.1f}%",
        f"{interval_ms:.0f}", f"{interval_ms / step_ms:.1f}", f"{buffers / count:.1f}",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=float, default=[1, 4, 16, 64, 100], help="millions of weights")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    rows = []
    for millions in args.sizes:
        rows.append(measure(millions, args.batch, args.repeats))
        print(rows[-1], flush=True)
    header = [
        "prunable weights", "train step (ms)", "callback per step (ms)", "per step / train step",
        "one interval (ms)", "interval / train step", "callback bytes per weight",
    ]  # fmt: skip
    body = (
        f"MLP of 4 equal hidden layers, batch {args.batch}, Adam; medians of {args.repeats} repeats (interval: a "
        "third as many). Per step: mask gradients, saliency update, gradient norm, re-apply masks (with half the "
        "weights cut). The per-step work is skipped for steps far from a decision (more than 4/(1-beta) steps, 400 "
        "at the default beta), so over a long epoch its share is smaller than shown.\n\n" + table(header, rows)
    )
    record("Callback scaling with model size", body)


if __name__ == "__main__":
    main()
