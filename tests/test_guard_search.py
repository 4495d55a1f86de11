"""Guard mode with its defaults: a line search for the sparsity the guard allows, one verdict per validation run,
honest about the guard's noise, and blind to the training loss's."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.nn import functional as F

from lightning_prune import RealTimePruningCallback
from lightning_prune.guard import Guard, Verdict

from helpers import CrashAt, TinyNet, loader, quiet_trainer


class Scripted(TinyNet):
    """Logs a guard metric ``val_acc`` whose true value depends on the sparsity of the prunable weights only (``drop``
    beyond ``limit``), plus seeded noise of standard deviation ``noise``; its training loss can be made noisy too."""

    def __init__(self, noise: float = 0.0, limit: float = 1.0, drop: float = 0.2, loss_noise: float = 0.0) -> None:
        super().__init__(lr=1e-2)
        self.noise, self.limit, self.drop, self.loss_noise = noise, limit, drop, loss_noise
        self.rng = torch.Generator().manual_seed(0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        # noise on a converged loss: what the line search must not read as damage
        return loss * math.exp(self.loss_noise * float(torch.randn((), generator=self.rng)))

    def sparsity(self) -> float:
        weights = [self.net[0].weight, self.net[2].weight]  # the classifier net[4] is not pruned
        return 1 - sum(int(w.count_nonzero()) for w in weights) / sum(w.numel() for w in weights)

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:  # one value per validation run, drawn once
            true = 0.9 - (self.drop if self.sparsity() > self.limit else 0.0)
            self.value = true + self.noise * float(torch.randn((), generator=self.rng))
        self.log("val_acc", self.value)


def search(module: Scripted, epochs: int, **settings) -> RealTimePruningCallback:
    L.seed_everything(0)
    pruning = RealTimePruningCallback(target_sparsity=None, guard="val_acc", **settings)
    # no sanity check: every value the scripted metric draws is one the guard sees
    quiet_trainer(max_epochs=epochs, num_sanity_val_steps=0, callbacks=[pruning]).fit(module, loader(), loader(64))
    return pruning


def decisions_to(pruning: RealTimePruningCallback, sparsity: float) -> int:
    return next(i + 1 for i, h in enumerate(pruning.history) if h["sparsity"] >= sparsity)


def test_with_the_defaults_a_task_no_cut_hurts_passes_90_percent_within_a_few_decisions_whatever_the_loss_does():
    # the training loss jumps by +-50% from step to step: a loss-paced run halves its pace on such noise
    pruning = search(Scripted(loss_noise=0.5), epochs=14, max_drop=0.02)
    assert pruning.pace_by == "guard"
    assert decisions_to(pruning, 0.9) <= 12
    assert pruning.sparsity >= 0.95
    # the pace is never slowed by the loss: no slow-down, no rollback, no reason that reads it
    assert pruning.history[0]["ratio"] == 0.5
    assert not any(h["action"] in ("slow_down", "rollback") or "loss" in h["reason"] for h in pruning.history)


def test_a_short_run_gets_far_too():
    # 5 epochs, one validation run each: a decision after each; the window holds the first 4
    pruning = search(Scripted(), epochs=5, max_drop=0.005)
    assert pruning.sparsity == pytest.approx(1 - 0.5**4, abs=1e-2)


def test_validating_more_often_makes_more_decisions():
    L.seed_everything(0)
    pruning = RealTimePruningCallback(target_sparsity=None, guard="val_acc", max_drop=0.005)
    # 16 batches an epoch, a validation run every 4: four decisions an epoch
    trainer = quiet_trainer(max_epochs=2, val_check_interval=4, num_sanity_val_steps=0, callbacks=[pruning])
    trainer.fit(Scripted(), loader(), loader(64))
    steps = [h["step"] for h in pruning.history]
    assert steps[:4] == [5, 9, 13, 16] and len(steps) == 8
    assert pruning.sparsity > 0.9


def test_a_noisy_guard_with_a_constant_true_metric_does_not_stop_pruning_and_says_what_max_drop_it_can_judge():
    # the metric moves by 0.01 on its own from run to run, twice max_drop
    moves = r"`val_acc` moves by about 0\.0\d+ between validation runs .* raise `max_drop`"
    with pytest.warns(UserWarning, match=moves):
        pruning = search(Scripted(noise=0.01), epochs=20, max_drop=0.005)
    assert pruning.sparsity >= 0.9
    assert not pruning.guard.exhausted


def test_a_real_drop_is_refused_through_the_noise():
    # beyond 60% sparsity the metric falls by 0.2, far beyond its noise of 0.01
    pruning = search(Scripted(noise=0.01, limit=0.6, drop=0.2), epochs=20, max_drop=0.005)
    assert any(h["action"] == "rollback" for h in pruning.history)
    assert 0.4 < pruning.sparsity <= 0.6


def test_without_noise_a_drop_just_beyond_max_drop_is_refused():
    pruning = search(Scripted(limit=0.6, drop=0.01), epochs=20, max_drop=0.005)
    assert pruning.guard.noise == 0.0 and 0.4 < pruning.sparsity <= 0.6


def test_the_noise_comes_from_runs_without_a_cut_between():
    guard = Guard("val_acc", "max", max_drop=0.01)
    guard.observe(0.90)
    assert guard.verdict() is Verdict.NO_CUT
    guard.after_cut()
    guard.observe(0.70)  # a run judging a cut: its move is the cut's, not noise
    assert guard.verdict() is Verdict.REFUSED and guard.moves == []
    guard.observe(0.88)  # the cut was undone: this run saw the model without it
    assert guard.verdict() is Verdict.NO_CUT and guard.moves == [pytest.approx(-0.02)]
    assert guard.noise is None and guard.tolerance == 0.01  # one move is no estimate yet
    guard.observe(0.91)
    guard.verdict()
    assert guard.noise == pytest.approx(0.025 / 0.6745, rel=1e-3)
    assert guard.tolerance == pytest.approx(0.01 + 2 * guard.noise)


def test_a_guard_search_resumed_from_a_checkpoint_continues_exactly(tmp_path):
    straight = search(Scripted(noise=0.01), epochs=10, max_drop=0.005)

    L.seed_everything(0)
    first = RealTimePruningCallback(target_sparsity=None, guard="val_acc", max_drop=0.005)
    module = Scripted(noise=0.01)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = quiet_trainer(max_epochs=10, enable_checkpointing=True, num_sanity_val_steps=0,
                            callbacks=[first, checkpoint, CrashAt(6)])  # fmt: skip
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(module, loader(), loader(64))
    second = RealTimePruningCallback(target_sparsity=None, guard="val_acc", max_drop=0.005)
    resumed = Scripted(noise=0.01)
    resumed.rng = module.rng  # the scripted noise goes on where it stopped
    quiet_trainer(max_epochs=10, num_sanity_val_steps=0, callbacks=[second]).fit(
        resumed, loader(), loader(64), ckpt_path=tmp_path / "last.ckpt"
    )
    assert [(h["action"], h["sparsity"]) for h in second.history] == [
        (h["action"], h["sparsity"]) for h in straight.history
    ]
    assert second.guard.moves == straight.guard.moves


def test_a_short_spike_of_the_gradient_norm_is_seen_wherever_it_falls():
    class Spiky(TinyNet):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * 100 if self.current_epoch == 0 and batch_idx >= 13 else loss  # the last 3 of 16 batches

    peaks, means = {}, {}
    for module in (TinyNet(), Spiky()):
        L.seed_everything(0)
        pruning = RealTimePruningCallback(target_sparsity=0.5, monitor="objective")
        quiet_trainer(max_epochs=2, callbacks=[pruning]).fit(module, loader())
        first = pruning.history[0]
        peaks[type(module).__name__], means[type(module).__name__] = first["grad_norm_max"], first["grad_norm"]
    assert peaks["Spiky"] > 30 * peaks["TinyNet"]
    # 3 steps of 16 at ~100x: the mean over every step of the interval moves by about 3 * 100 / 16
    assert means["Spiky"] > 5 * means["TinyNet"]


def test_pace_by_guard_needs_a_guard_and_a_guard_with_few_validation_runs_says_the_search_is_short():
    with pytest.raises(ValueError, match=r"`pace_by`='guard' .* needs `guard=`"):
        RealTimePruningCallback(pace_by="guard")
    pruning = RealTimePruningCallback(target_sparsity=None, guard="val_acc", max_drop=0.01)
    short = r"judges one cut per validation run.*about 2.*near 75\.0% .*val_check_interval"
    with pytest.warns(UserWarning, match=short):
        quiet_trainer(max_epochs=3, callbacks=[pruning]).fit(Scripted(), loader(), loader(64))
    assert math.isclose(pruning.sparsity, 0.75, abs_tol=1e-2)
