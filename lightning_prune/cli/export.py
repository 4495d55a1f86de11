"""``lightning-prune export``: the compact dense model of a checkpoint (structurally pruned channels removed)."""

import argparse
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule

from lightning_prune.structured import compact_copy


def export_main(argv: list[str]) -> None:
    """``lightning-prune export --ckpt_path PATH --output FILE``: the compact dense model of a checkpoint."""
    parser = argparse.ArgumentParser(
        prog="lightning-prune export",
        description="Write the compact dense model of a checkpoint: the backbone without the channels that pruning "
        "zeroed, whose outputs equal the pruned model's. Load it with `torch.load(FILE, weights_only=False)` "
        "(--format module) or `torch.jit.load(FILE)` (--format torchscript).",
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by `lightning-prune fit`")
    parser.add_argument("--output", required=True, help="file to write")
    parser.add_argument("--format", choices=("module", "torchscript"), default="module")
    options = parser.parse_args(argv)
    if not Path(options.ckpt_path).is_file():
        parser.error(f"--ckpt_path {options.ckpt_path!r} is not a file")
    compact, example, before = export_checkpoint(options.ckpt_path)
    if options.format == "torchscript":
        inputs = example if isinstance(example, tuple) else (example,)
        torch.jit.trace(compact.eval(), inputs).save(options.output)
    else:
        torch.save(compact, options.output)
    after = sum(p.numel() for p in compact.parameters())
    print(f"Wrote {options.output} ({options.format}): {after:,} parameters, {before:,} before compaction.")


def export_checkpoint(ckpt_path: str) -> tuple[torch.nn.Module, Any, int]:
    """Rebuild a checkpoint's module (its hyperparameters describe it), compact it, and return the backbone (or the
    module when it has none), the example input it was traced with, and the parameter count before compaction."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    module = LightningModule.load_from_checkpoint(ckpt_path, map_location="cpu")
    states = [v for k, v in checkpoint.get("callbacks", {}).items() if k.startswith("RealTimePruningCallback")]
    example = next((s["example_input"] for s in states if s.get("example_input") is not None), None)
    if example is None:
        example = getattr(module, "example_input_array", None)
    before = sum(p.numel() for p in module.parameters())
    compact = compact_copy(module, example)
    return getattr(compact, "backbone", compact), example, before
