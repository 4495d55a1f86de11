"""Training-step time with no callback, with RealTimePruningCallback (unstructured and structured) and with Lightning's
ModelPruning, side by side: what a user sees.

Every round fits each variant once from the same seed, interleaved in one process (the order rotates from round to
round), on synthetic batches of the task's shape (data loading is not what is measured). Epoch 0 prunes to the target;
epoch 1 is timed two ways: the median time between consecutive batch starts (the forward, backward, optimizer step and
every hook of every callback, whatever their order in the callback list), and the wall time of the whole epoch (its
decision included). Each figure is the ratio to "no callback" in the same round, then the median over rounds.

Large tensors are allocated on transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``, set here unless given): without
them, eight identical fits of the 13M-weight MLP with no callback took 56.90 to 98.72 ms a step on a 2-core machine;
with them, eight took 66.13 to 72.14 ms. It narrows the spread but does not remove it: in one 5-round run with huge
pages the no-callback fits still ranged 56.55 to 72.10 ms, so read the ratio ranges, not only the medians.

    python bench/overhead.py --model mlp13m --rounds 3 --steps 60
    python bench/overhead.py --model resnet18 --rounds 3 --steps 15
    python bench/overhead.py --model lstm --rounds 3 --steps 30
    python bench/overhead.py --model mnist --rounds 2 --steps 860 --variants "ours, pruning window" ModelPruning
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # read when torch is imported: keep it before the imports below

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import ClassificationModule, RealTimePruningCallback
from lightning_prune.compare.baselines import baseline_callback
from lightning_prune.models import MNISTCNN, CIFARResNet18, LSTMClassifier

from common import record, table


def mlp13m() -> nn.Module:
    """13.2M prunable weights (784x4096, 4096x2048, 2048x768) and a small classifier."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 4096), nn.ReLU(), nn.Linear(4096, 2048), nn.ReLU(),
                         nn.Linear(2048, 768), nn.ReLU(), nn.Linear(768, 10))  # fmt: skip


def images(shape: tuple[int, ...]):
    return lambda count: (torch.randn(count, *shape),)


def reviews(count: int) -> tuple[torch.Tensor, ...]:
    """IMDB-shaped batches: 256 tokens of a 20,000-word vocabulary, full length."""
    return torch.randint(1, 20000, (count, 256)), torch.full((count,), 256)


# name -> (backbone, inputs for `count` samples)
MODELS = {
    "mnist": (MNISTCNN, images((1, 28, 28))),
    "mlp13m": (mlp13m, images((1, 28, 28))),
    "resnet18": (CIFARResNet18, images((3, 32, 32))),
    "lstm": (lambda: LSTMClassifier(hidden_size=256), reviews),
}


class StepTimer(Callback):
    """Time between consecutive batch starts in the timed epoch, and that epoch's wall time: from its first batch's
    start to ``on_train_end``, which follows every callback's ``on_train_epoch_end`` of the last epoch (the timed one),
    so the epoch's decision is in it."""

    def __init__(self, timed_epoch: int) -> None:
        self.timed_epoch = timed_epoch
        self.starts: list[float] = []
        self.epoch_end: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.timed_epoch:
            self.starts.append(time.perf_counter())

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.timed_epoch:
            self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module):
        # after every callback's epoch-end hook of the last (timed) epoch, the decision included
        self.epoch_end = time.perf_counter()

    def epoch_ms(self) -> float:
        return 1000 * (self.epoch_end - self.starts[0])

    def median_ms(self) -> float:
        steps = [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)]
        return 1000 * statistics.median(steps[2:] if len(steps) > 6 else steps)


VARIANTS = ["none", "ours, pruning window", "ours, after target", "ours structured, masked", "ModelPruning"]
HOOKS = ("on_train_epoch_start", "on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end",
         "on_train_epoch_end")  # fmt: skip


def time_hooks(callback: Callback, timer: StepTimer) -> list[float]:
    """Wrap the callback's hooks: seconds spent inside them during the timed epoch (what the callback costs, read
    directly instead of as a difference of two noisy step times)."""
    spent: list[float] = []

    for name in HOOKS:
        hook = getattr(callback, name)

        def timed(trainer, *args, _hook=hook, **kwargs):
            start = time.perf_counter()
            result = _hook(trainer, *args, **kwargs)
            if trainer.current_epoch == timer.timed_epoch:
                spent.append(time.perf_counter() - start)
            return result

        setattr(callback, name, timed)
    return spent


def pruning_callback(variant: str, module: ClassificationModule, target: float, steps: int):
    if variant == "none":
        return None
    if variant == "ours, pruning window":
        # the window stays open and every step is near a decision: the gradient norm at every step, the saliency
        # every saliency_every-th, and the masking, on top of a decision at the epoch's end
        return RealTimePruningCallback(target_sparsity=target, initial_ratio=0.5, max_ratio=0.5, end_epoch=100)
    # decisions twice in epoch 0 (the cut to the target, then "target sparsity reached"), so all of epoch 1 is what
    # the epochs after the target see: the masking and the loss each step (no gradient norm), and a "done" decision,
    # with its read-outs, every interval
    after_target = dict(target_sparsity=target, initial_ratio=target, max_ratio=0.99, end_epoch=1,
                        interval_unit="step", interval=max(1, steps // 2))  # fmt: skip
    if variant == "ours, after target":
        return RealTimePruningCallback(**after_target)
    if variant == "ours structured, masked":
        # channels cut in epoch 0 and kept masked through epoch 1 (shrunk only at the end of fit): the full-size
        # network plus our per-step work, i.e. the structured mode's cost before it pays off
        return RealTimePruningCallback(mode="structured", shrink_when="end", **after_target)
    if variant == "ModelPruning":
        # the same weights as ours, the whole target at the end of epoch 0, as `compare`'s baselines build it
        return baseline_callback(module, {0: target})
    raise ValueError(variant)


def run_variant(
    variant: str, model_name: str, steps: int, batch_size: int, target: float, seed: int
) -> tuple[float, float, float | None]:
    """The timed epoch's median ms per step, its wall time in ms, and the ms per step spent in our hooks."""
    L.seed_everything(seed, verbose=False)
    backbone_class, inputs = MODELS[model_name]
    module = ClassificationModule(backbone_class())
    classes = module.num_classes
    data = TensorDataset(*inputs(steps * batch_size), torch.randint(0, classes, (steps * batch_size,)))
    timer = StepTimer(timed_epoch=1)
    pruning = pruning_callback(variant, module, target, steps)
    callbacks = [timer] + ([pruning] if pruning is not None else [])
    in_hooks = time_hooks(pruning, timer) if isinstance(pruning, RealTimePruningCallback) else None
    trainer = L.Trainer(
        max_epochs=2, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=batch_size))
    hook_ms = None if in_hooks is None else 1000 * sum(in_hooks) / steps
    return timer.median_ms(), timer.epoch_ms(), hook_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="mnist")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60, help="batches per epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS, metavar="VARIANT",
                        help=f"a subset of {VARIANTS} (the ratios need 'none')")  # fmt: skip
    args = parser.parse_args()
    variants = ["none"] + [v for v in args.variants if v != "none"]
    times: dict[str, list[float]] = {v: [] for v in variants}
    epochs: dict[str, list[float]] = {v: [] for v in variants}
    hooks: dict[str, list[float]] = {v: [] for v in variants}
    for round_index in range(args.rounds):
        # rotate the order: whichever runs first in a process pays for its warm-up, so it must not always be the same
        shift = round_index % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            ms, epoch_ms, hook_ms = run_variant(variant, args.model, args.steps, args.batch_size, args.target,
                                                seed=round_index)  # fmt: skip
            times[variant].append(ms)
            epochs[variant].append(epoch_ms)
            if hook_ms is not None:
                hooks[variant].append(hook_ms)
            shown = "" if hook_ms is None else f", {hook_ms:.3f} ms/step inside its hooks"
            print(f"round {round_index + 1}/{args.rounds} {variant}: {ms:.2f} ms/step, epoch {epoch_ms:.0f} ms{shown}",
                  flush=True)  # fmt: skip
    rows = []
    base_ms = statistics.median(times["none"])
    for variant in variants:
        ratios = [t / base for t, base in zip(times[variant], times["none"], strict=True)]
        epoch_ratios = [t / base for t, base in zip(epochs[variant], epochs["none"], strict=True)]
        in_hooks = "" if not hooks[variant] else f"{statistics.median(hooks[variant]):.3f}"
        share = "" if not hooks[variant] else f"{100 * statistics.median(hooks[variant]) / base_ms:.2f}%"
        rows.append([variant, f"{statistics.median(times[variant]):.2f}", f"{statistics.median(ratios):.3f}",
                     f"{min(ratios):.3f} .. {max(ratios):.3f}", f"{statistics.median(epoch_ratios):.3f}",
                     f"{min(epoch_ratios):.3f} .. {max(epoch_ratios):.3f}", in_hooks, share])  # fmt: skip
    header = ["variant", "median ms/step", "step ratio to none (median)", "step ratio range",
              "epoch wall-time ratio (median)", "epoch ratio range", "ms/step in our hooks",
              "hooks / step without callback"]  # fmt: skip
    body = (
        f"{args.model}, batch {args.batch_size}, target sparsity {args.target}, {args.steps} steps an epoch, "
        f"{args.rounds} interleaved rounds, THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')}; epoch 1 "
        "timed: the median step (batch start to batch start: every hook of every callback) and the epoch's wall time "
        "(its end-of-epoch decision included). 'pruning window': every step near a decision, and a decision at the "
        "epoch's end; 'after target': the target reached in epoch 0, so epoch 1 keeps the cut weights at zero and "
        "logs a 'done' decision each interval, without the gradient norm. "
        "The last two columns time our callback's hooks directly (all of them, summed over the timed epoch, per "
        "step), against the median step without a callback.\n\n" + table(header, rows)
    )
    record(f"Callback overhead: {args.model}", body)


if __name__ == "__main__":
    main()
