"""How the callback's own cost grows with model size (1M to 100M prunable weights), next to a training step.

For MLPs of growing width it trains, in one process, with RealTimePruningCallback deciding every few steps (so every
step is near a decision and scored as the callback scores them), and times inside the callback's hooks: the per-step
work on steps without a decision, and one whole decision (signals, controller, selection, masks, optimizer state,
read-outs and logging). The training step itself is timed in the same run, between batch starts on steps without a
decision. Memory: the callback's per-weight buffers (masks, saliency, the rollback copy of the last cut) at the last
decision, in bytes per prunable weight.

    python bench/scaling.py --sizes 1 4 16 64 100
"""

import argparse
import statistics
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import ClassificationModule, RealTimePruningCallback

from common import record, table

HOOKS = ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end")


def mlp(millions: float) -> nn.Module:
    """Four hidden layers of equal width holding about ``millions`` M prunable weights (the classifier is small)."""
    width = int((millions * 1e6 / 3) ** 0.5)
    return nn.Sequential(
        nn.Linear(256, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10),
    )  # fmt: skip


class BatchStarts(Callback):
    """Placed first: when each batch starts."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module):
        self.starts.append(time.perf_counter())


class Decisions(Callback):
    """Placed after the pruning callback: which batches ended with a decision, and the buffers right after it."""

    def __init__(self, pruning: RealTimePruningCallback) -> None:
        self.pruning = pruning
        self.batches: set[int] = set()
        self.buffer_bytes = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.pruning.history and self.pruning.history[-1]["step"] == trainer.global_step:
            self.batches.add(batch_idx)
            self.buffer_bytes = self.pruning.masks.buffer_bytes() + self.pruning.saliency.buffer_bytes()


def time_hooks(callback: RealTimePruningCallback, starts: BatchStarts) -> dict[int, float]:
    """Seconds inside the callback's per-step hooks, per batch."""
    spent: dict[int, float] = {}
    for name in HOOKS:
        hook = getattr(callback, name)

        def timed(trainer, *args, _hook=hook, **kwargs):
            start = time.perf_counter()
            result = _hook(trainer, *args, **kwargs)
            batch = len(starts.starts) - 1
            spent[batch] = spent.get(batch, 0.0) + time.perf_counter() - start
            return result

        setattr(callback, name, timed)
    return spent


def measure(millions: float, batch: int, steps: int, interval: int) -> list[str]:
    L.seed_everything(0, verbose=False)
    module = ClassificationModule(mlp(millions))
    data = TensorDataset(torch.randn(steps * batch, 256), torch.randint(0, 10, (steps * batch,)))
    # the target is not reached inside the run: every decision prunes, and every step is near one
    pruning = RealTimePruningCallback(target_sparsity=0.99, initial_ratio=0.3, max_ratio=0.3, interval=interval,
                                      interval_unit="step", end_epoch=100)  # fmt: skip
    starts, decisions = BatchStarts(), Decisions(pruning)
    spent = time_hooks(pruning, starts)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[starts, pruning, decisions],
                        num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=batch))
    batch_seconds = [b - a for a, b in zip(starts.starts, starts.starts[1:], strict=False)]
    quiet = [i for i in range(2, len(batch_seconds)) if i not in decisions.batches]
    train_ms = 1000 * statistics.median(batch_seconds[i] - spent.get(i, 0.0) for i in quiet)
    hooks_ms = 1000 * statistics.median(spent.get(i, 0.0) for i in quiet)
    decision_ms = 1000 * statistics.median(spent[i] for i in decisions.batches)
    count = pruning.pruner.initial_weights
    return [
        f"{count / 1e6:.1f}M", f"{train_ms:.1f}", f"{hooks_ms:.2f}", f"{100 * hooks_ms / train_ms:.2f}%",
        f"{decision_ms:.0f}", f"{decision_ms / train_ms:.2f}", f"{decisions.buffer_bytes / count:.2f}",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=float, default=[1, 4, 16, 64, 100], help="millions of weights")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="training steps per size")
    parser.add_argument("--interval", type=int, default=10, help="steps between decisions")
    args = parser.parse_args()
    rows = []
    for millions in args.sizes:
        rows.append(measure(millions, args.batch, args.steps, args.interval))
        print(rows[-1], flush=True)
    header = [
        "prunable weights", "train step (ms)", "callback per step (ms)", "per step / train step",
        "one decision (ms)", "decision / train step", "callback bytes per weight",
    ]  # fmt: skip
    body = (
        f"MLP of 4 equal hidden layers, batch {args.batch}, Adam, {args.steps} steps with a decision every "
        f"{args.interval} (every step near one, scored every 16th step as by default); medians. Per step: the "
        "callback's hooks on steps that end without a decision (scoring, gradient norm, re-applying the masks, the "
        "pacing loss). One decision: the hook call that decides (signals, controller, selection, cut, optimizer "
        "state, read-outs, logging). Bytes: masks + running saliency + the rollback copy of the last cut, at the "
        "last decision, per prunable weight.\n\n" + table(header, rows)
    )
    record("Callback scaling with model size", body)


if __name__ == "__main__":
    main()
