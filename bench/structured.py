"""Structured pruning end to end: an unpruned and a structurally pruned run of one task, back to back in one process.

Both arms train from the same seed on the same data for the same epochs; the pruned arm shrinks the model while it
trains. Reported side by side: test accuracy, parameters, FLOPs (ptflops MACs per sample) and measured latency per
batch of the final model (the pruned arm's compact export), and the training wall time of each arm.

    python bench/structured.py --task mnist --epochs 5 --target 0.9
    python bench/structured.py --task imdb --epochs 2 --target 0.8 --limit-train-batches 100 --hidden-size 128
    python bench/structured.py --task cifar10 --epochs 5 --target 0.8 --limit-train-batches 100
"""

import argparse
import time
from pathlib import Path

import lightning as L
import torch

from lightning_prune import (
    CIFAR10DataModule,
    ClassificationModule,
    IMDBDataModule,
    MNISTDataModule,
    RealTimePruningCallback,
    profile,
)
from lightning_prune.models import MNISTCNN, CIFARResNet18, LSTMClassifier

from common import record, table

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TASKS = {"mnist": MNISTDataModule, "cifar10": CIFAR10DataModule, "imdb": IMDBDataModule}


def backbone(task: str, args: argparse.Namespace) -> torch.nn.Module:
    if task == "mnist":
        return MNISTCNN()
    if task == "cifar10":
        return CIFARResNet18()
    return LSTMClassifier(vocab_size=args.vocab_size, hidden_size=args.hidden_size)


def datamodule(task: str, args: argparse.Namespace) -> L.LightningDataModule:
    data_class, default_dir = TASKS[task], SHARED_DATA / task
    kwargs = {"vocab_size": args.vocab_size, "max_length": args.max_length} if task == "imdb" else {}
    return data_class(
        data_dir=args.data_dir or default_dir,
        batch_size=64,
        num_workers=args.num_workers,
        val_size=args.val_size,
        **kwargs,
    )


def run_arm(args: argparse.Namespace, pruned: bool) -> dict:
    L.seed_everything(args.seed, verbose=False)
    data = datamodule(args.task, args)
    module = ClassificationModule(backbone(args.task, args))
    callbacks = []
    if pruned:
        callbacks.append(RealTimePruningCallback(mode="structured", target_sparsity=args.target, verbose=True))
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator=args.accelerator, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
        limit_train_batches=args.limit_train_batches, limit_val_batches=args.limit_val_batches,
        precision=args.precision,
    )  # fmt: skip
    data.prepare_data()
    data.setup("fit")  # decode / tokenise outside the timed fit
    start = time.perf_counter()
    trainer.fit(module, data)
    fit_seconds = time.perf_counter() - start
    test = trainer.test(module, data, verbose=False)[0]
    final = callbacks[0].export(module) if pruned else module
    batch = next(iter(data.test_dataloader()))
    inputs = tuple(t for t in batch[:-1])
    figures = {"test_acc": test["test_acc"], "fit_s": fit_seconds}
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        model = final.to(device)
        for size in (1, 64):
            example = tuple(t[:size].to(device) for t in inputs)
            example = example[0] if len(example) == 1 else example
            measured = profile(model, example, threads=args.threads if device == "cpu" else None, repeats=20)
            figures[f"latency_{device}_b{size}"] = measured["latency_ms_per_batch"]
    figures.update({k: measured[k] for k in ("params_total", "params_nonzero", "flops_dense", "flops_effective")})
    if pruned:
        figures["sparsity"] = callbacks[0].sparsity
        print(final.backbone)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(TASKS), default="mnist")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--limit-train-batches", type=float, default=1.0)
    parser.add_argument("--limit-val-batches", type=float, default=1.0)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for the latency figures")
    parser.add_argument("--vocab-size", type=int, default=20000)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    if args.limit_train_batches > 1:
        args.limit_train_batches = int(args.limit_train_batches)
    if args.limit_val_batches > 1:
        args.limit_val_batches = int(args.limit_val_batches)
    dense = run_arm(args, pruned=False)
    pruned = run_arm(args, pruned=True)
    rows = [
        ["test accuracy", f"{dense['test_acc']:.4f}", f"{pruned['test_acc']:.4f}",
         f"{100 * (pruned['test_acc'] - dense['test_acc']):+.2f} points"],
        ["parameters", f"{dense['params_total']:,}", f"{pruned['params_total']:,}",
         f"{dense['params_total'] / pruned['params_total']:.2f}x fewer"],
        ["FLOPs (MACs / sample)", f"{dense['flops_dense']:,}", f"{pruned['flops_dense']:,}",
         f"{dense['flops_dense'] / pruned['flops_dense']:.2f}x fewer"],
        ["training wall time (s)", f"{dense['fit_s']:.1f}", f"{pruned['fit_s']:.1f}",
         f"{pruned['fit_s'] / dense['fit_s']:.3f}x"],
    ]  # fmt: skip
    for key in sorted(k for k in dense if k.startswith("latency_")):
        rows.append([f"{key.replace('_', ' ')} (ms)", f"{dense[key]:.3f}", f"{pruned[key]:.3f}",
                     f"{dense[key] / pruned[key]:.2f}x faster"])  # fmt: skip
    body = (
        f"task {args.task}, {args.epochs} epochs, limit_train_batches {args.limit_train_batches}, target sparsity "
        f"{args.target} (reached {pruned['sparsity']:.4f}), seed {args.seed}, precision {args.precision}, "
        f"data {args.data_dir or SHARED_DATA / args.task} (val_size {args.val_size}), "
        f"accelerator {args.accelerator}; both arms in one process, unpruned first. Latency: median of 20 after "
        f"warm-up, CPU pinned to {args.threads} threads; the pruned arm is its compact export.\n\n"
        + table(["", "unpruned", "structured pruned", "ratio"], rows)
    )
    record(f"Structured pruning: {args.task}", body)


if __name__ == "__main__":
    main()
