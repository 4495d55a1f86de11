"""Checkpoints written before the callback's state was nested still resume: same masks, same history, and on to the
target (tests/data/README.md says how they were made)."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lightning_prune import RealTimePruningCallback
from lightning_prune.decision import checkpoint_state

from helpers import TinyNet, loader, quiet_trainer

DATA = Path(__file__).parent / "data"


class MasksAtStart(Callback):
    def __init__(self, pruning: RealTimePruningCallback) -> None:
        self.pruning, self.masks = pruning, None

    def on_train_start(self, trainer, pl_module):
        self.masks = {name: mask.clone() for name, mask in self.pruning.masks.pruned.items()}


@pytest.mark.parametrize("mode", ["unstructured", "structured"])
def test_a_checkpoint_of_the_flat_layout_resumes_with_its_masks_and_history(mode):
    path = DATA / f"flat-layout-{mode}.ckpt"
    saved = next(iter(torch.load(path, weights_only=False)["callbacks"].values()))
    assert "controller" in saved and "decision" not in saved  # the old layout, side by side
    pruning = RealTimePruningCallback(mode=mode, monitor="objective", target_sparsity=0.6, initial_ratio=0.2)
    at_start = MasksAtStart(pruning)
    quiet_trainer(max_epochs=6, callbacks=[pruning, at_start]).fit(TinyNet(), loader(), ckpt_path=str(path))
    assert pruning.history[: len(saved["history"])] == saved["history"]
    for name, mask in saved["masks"]["pruned"].items():
        if mode == "unstructured":
            assert torch.equal(at_start.masks[name].cpu(), mask), name
    assert pruning.sparsity == pytest.approx(0.6, abs=0.05)
    assert checkpoint_state(saved)["pruner"]["masks"] is saved["masks"]
