"""pace_by="damage": each cut measured on a fixed probe (the first batch's inputs), too harmful ones made smaller."""

import re

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lightning_prune import RealTimePruningCallback
from lightning_prune.controller import Action, RatioController
from lightning_prune.probe import DamageProbe

from helpers import CrashAt, TinyNet, loader, quiet_trainer


def test_the_ratio_grows_after_a_harmless_cut_and_shrinks_after_a_harmful_one_whatever_the_loss_did():
    controller = RatioController(pace_by="damage", initial_ratio=0.1, damage_tolerance=0.05, growth=2, shrink=0.5)
    assert controller.step(loss=1.0, grad_norm=None, sparsity=0.0, intervals_left=10).reason == "first cut"
    # the loss rose 5% (paced by the loss, that would slow down), but the cut itself did no harm: faster
    harmless = controller.step(loss=1.05, grad_norm=None, sparsity=0.1, intervals_left=9, damage=0.01)
    assert (harmless.action, harmless.ratio) == (Action.PRUNE, pytest.approx(0.2))
    # the loss fell, but the cut did harm: slower
    harmful = controller.step(loss=0.5, grad_norm=None, sparsity=0.28, intervals_left=8, damage=0.2)
    assert (harmful.action, harmful.ratio) == (Action.SLOW_DOWN, pytest.approx(0.1))
    # no cut since the last decision: nothing to judge, the pace is kept
    kept = controller.step(loss=0.5, grad_norm=None, sparsity=0.35, intervals_left=7, damage=None)
    assert kept.ratio == pytest.approx(0.1) and "pace kept" in kept.reason


def test_a_harmful_cut_is_made_smaller_but_never_below_the_targets_floor():
    controller = RatioController(pace_by="damage", target_sparsity=0.9, initial_ratio=0.5, max_ratio=0.9)
    decision = controller.step(loss=1.0, grad_norm=None, sparsity=0.0, intervals_left=4)
    floor = 1 - 0.1**0.25  # four intervals left to reach 90%: each cut must take at least this much (0.438)
    assert decision.ratio == pytest.approx(0.5) and controller.floor == pytest.approx(floor)
    assert controller.smaller_cut(0.5, damage=1.0) == pytest.approx(max(0.25, floor))
    assert controller.smaller_cut(floor, damage=1.0) is None  # at the floor the cut is made, harm or not
    assert controller.smaller_cut(0.5, damage=0.0) is None  # harmless: kept


def test_pace_by_names_itself_when_wrong():
    with pytest.raises(ValueError, match=re.escape("`pace_by` must be one of ('loss', 'damage', 'guard'), got 'dmg'")):
        RealTimePruningCallback(pace_by="dmg")
    with pytest.raises(ValueError, match=re.escape("`damage_tolerance` must be a number in [0, inf], got -0.1")):
        RealTimePruningCallback(pace_by="damage", damage_tolerance=-0.1)


def test_the_probe_is_deterministic_and_leaves_the_model_in_training_mode():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.BatchNorm1d(8), nn.Linear(8, 3)).train()
    probe = DamageProbe()
    probe.capture([torch.randn(32, 8)])
    probe.before_cut(model)
    # nothing cut: dropout and batch statistics would differ between two training-mode passes, eval mode does not
    assert probe.after_cut(model) == 0.0
    assert model.training and model[1].training


def test_a_model_the_probe_cannot_call_is_named_with_what_to_do():
    probe = DamageProbe()
    probe.capture([torch.randn(4, 5)])
    with pytest.raises(RuntimeError, match=r"pace_by='damage'.*could not be called on it.*pace_by='loss'"):
        probe.before_cut(nn.Linear(3, 2))


class Snapshots(Callback):
    """The weights and their Adam moments just before and just after the first decision (in on_train_epoch_end)."""

    def __init__(self, pruning: RealTimePruningCallback) -> None:
        self.pruning = pruning
        self.before: dict[str, list[torch.Tensor]] = {}
        self.after: dict[str, list[torch.Tensor]] = {}

    def take(self, optimizer: torch.optim.Optimizer) -> dict[str, list[torch.Tensor]]:
        """Each weight, then its exp_avg and exp_avg_sq."""
        return {name: [t.detach().clone() for t in (w, optimizer.state[w]["exp_avg"], optimizer.state[w]["exp_avg_sq"])]
                for name, w in self.pruning.masks.weights.items()}  # fmt: skip

    def on_train_epoch_end(self, trainer, pl_module):  # called after the pruning callback's, which is listed first
        if trainer.current_epoch == 0:
            self.after = self.take(trainer.optimizers[0])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0:
            self.before = self.take(trainer.optimizers[0])


def test_a_too_harmful_cut_is_undone_and_a_smaller_one_kept_with_the_other_weights_untouched():
    L.seed_everything(0)
    # a first cut of 80% of the weights, where any change of the outputs counts as harm: it is halved three times
    pruning = RealTimePruningCallback(pace_by="damage", damage_tolerance=0.0, initial_ratio=0.8, max_ratio=0.8,
                                      min_layer_density=0.0)  # fmt: skip
    snapshots = Snapshots(pruning)
    quiet_trainer(max_epochs=1, callbacks=[pruning, snapshots]).fit(TinyNet(), loader())
    first = pruning.history[0]
    assert first["ratio"] == pytest.approx(0.8 * 0.5**3)
    assert re.search(r"0\.8000 did damage \S+ > 0\.0: cut 0\.1000$", first["reason"]), first["reason"]
    assert first["sparsity"] == pytest.approx(0.1, abs=1e-3) and pruning.sparsity == pytest.approx(0.1, abs=1e-3)
    for name, after in snapshots.after.items():
        before, cut = snapshots.before[name], pruning.masks.pruned[name]
        assert all((tensor[cut] == 0).all() for tensor in after)
        # the weights the trial cuts took and gave back, and their Adam moments, are exactly what they were
        for what, then, now in zip(("weight", "exp_avg", "exp_avg_sq"), before, after, strict=True):
            assert torch.equal(now[~cut], then[~cut]), f"{name}: {what}"


def test_a_harmless_cut_is_kept_whole():
    L.seed_everything(0)
    pruning = RealTimePruningCallback(pace_by="damage", damage_tolerance=10.0, initial_ratio=0.3)
    quiet_trainer(max_epochs=1, callbacks=[pruning]).fit(TinyNet(), loader())
    assert pruning.history[0]["ratio"] == pytest.approx(0.3) and "did damage" not in pruning.history[0]["reason"]


def test_a_run_resumed_mid_way_measures_on_the_same_probe_and_makes_the_same_cuts(tmp_path):
    settings = {"pace_by": "damage", "damage_tolerance": 0.01, "target_sparsity": 0.8, "initial_ratio": 0.4}
    L.seed_everything(0)
    uninterrupted = RealTimePruningCallback(**settings)
    quiet_trainer(max_epochs=6, callbacks=[uninterrupted]).fit(TinyNet(), loader())
    assert any("did damage" in h["reason"] for h in uninterrupted.history)  # the probe did decide something

    L.seed_everything(0)
    first = RealTimePruningCallback(**settings)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = quiet_trainer(max_epochs=6, callbacks=[first, checkpoint, CrashAt(3)], enable_checkpointing=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(TinyNet(), loader())
    resumed = RealTimePruningCallback(**settings)
    trainer = quiet_trainer(max_epochs=6, callbacks=[resumed], default_root_dir=tmp_path)
    trainer.fit(TinyNet(), loader(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert torch.equal(resumed.decisions.probe.inputs[0], first.decisions.probe.inputs[0])
    assert [h["ratio"] for h in resumed.history] == pytest.approx([h["ratio"] for h in uninterrupted.history])
    assert [h["reason"] for h in resumed.history] == [h["reason"] for h in uninterrupted.history]


def test_structured_mode_tries_smaller_cuts_of_whole_units_too():
    L.seed_everything(0)
    pruning = RealTimePruningCallback(mode="structured", pace_by="damage", damage_tolerance=0.0, initial_ratio=0.8,
                                      max_ratio=0.8, min_layer_density=0.0)  # fmt: skip
    module = TinyNet()
    quiet_trainer(max_epochs=2, callbacks=[pruning]).fit(module, loader())
    first = pruning.history[0]
    assert first["ratio"] == pytest.approx(0.1) and "did damage" in first["reason"]
    # one pruning interval (end_epoch 80% of 2): the model keeps what the kept cut left, whole units removed
    assert [h["action"] for h in pruning.history] == ["prune", "done"]
    assert pruning.sparsity == pytest.approx(0.1, abs=0.03)
    assert module.net[0].out_features + module.net[2].out_features < 64
