"""``target_sparsity`` and ``cb.sparsity`` count the same weights in both modes: every default prunable weight.

Structured mode used to count only the weights of the groups it prunes: on Lightning's demo Transformer (whose
embedding stream it leaves out) it reported 0.5 at 12.5% zeros. Now the weights no pruned group holds count as
weights that stay, setup says what the target can reach, and checkpoints written by the old counting resume counted
the new way.
"""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_foreign_models import DemoTransformer, tokens

from lightning_prune import RealTimePruningCallback

from helpers import dense_prunable_count, measured_sparsity, quiet_trainer


def demo_data():
    return tokens(length=8, vocab=40, target_is_text=True)


def fit_demo(tmp_path, epochs: int, pruning: RealTimePruningCallback, ckpt_path=None) -> DemoTransformer:
    module = DemoTransformer()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    quiet_trainer(max_epochs=epochs, callbacks=[pruning, checkpoint], enable_checkpointing=True).fit(
        module, demo_data(), ckpt_path=ckpt_path
    )
    return module


@pytest.mark.timeout(120)
def test_the_demo_transformers_sparsity_counts_the_stream_it_leaves_out(tmp_path):
    L.seed_everything(0)
    pruning = RealTimePruningCallback(mode="structured", target_sparsity=0.3, initial_ratio=0.3, end_epoch=1)
    with pytest.warns(UserWarning, match=r"cuts the pruned groups deeper"):
        module = fit_demo(tmp_path, 2, pruning)
    dense = dense_prunable_count(DemoTransformer())
    assert pruning.pruner.initial_weights == dense
    assert pruning.sparsity == pytest.approx(measured_sparsity(module, dense), abs=1e-9)
    assert pruning.sparsity == pytest.approx(0.3, abs=0.02)


@pytest.mark.timeout(180)
def test_a_checkpoint_counted_over_the_pruned_groups_only_resumes_counted_over_every_prunable_weight(tmp_path):
    L.seed_everything(0)
    first = RealTimePruningCallback(mode="structured", target_sparsity=0.3, initial_ratio=0.3, end_epoch=2)
    fit_demo(tmp_path, 2, first)
    # what the old code saved: the names and the number of the weights of the pruned groups only, and no "counted"
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    key = next(k for k in checkpoint["callbacks"] if k.startswith("RealTimePruningCallback"))
    # (the old code also saved the flat layout: the decision's and the pruner's keys side by side)
    state = {**checkpoint["callbacks"][key]["decision"], **checkpoint["callbacks"][key]["pruner"]}
    members = {m.param for g in first.pruner.plan.groups for m in g.members}
    narrowed = [n for n in state["prunable"] if n in members]
    dense = dict(DemoTransformer().named_parameters())
    state.update(prunable=narrowed, initial_weights=sum(dense[n].numel() for n in narrowed))
    del state["counted"]
    checkpoint["callbacks"][key] = state
    torch.save(checkpoint, tmp_path / "old.ckpt")

    resumed = RealTimePruningCallback(mode="structured", target_sparsity=0.3, initial_ratio=0.3, end_epoch=2)
    module = fit_demo(tmp_path / "resumed", 3, resumed, ckpt_path=tmp_path / "old.ckpt")
    assert resumed.pruner.initial_weights == dense_prunable_count(DemoTransformer())
    assert resumed.sparsity == pytest.approx(measured_sparsity(module, dense_prunable_count(DemoTransformer())))
    assert resumed.history[:2] == first.history[:2]
