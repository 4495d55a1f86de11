"""Guard mode: a logged validation metric keeps or refuses every cut, and pruning goes as far as it allows."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_prune import RealTimePruningCallback
from lightning_prune.guard import GUARD_PATIENCE, Guard, Verdict

from helpers import CrashAt, TinyNet, loader, quiet_trainer


class DensityNet(TinyNet):
    """Validation logs the share of the prunable weights still non-zero (and its complement): a guard metric whose
    value after each cut is known exactly, so the tests know which cuts the guard must keep."""

    def validation_step(self, batch, batch_idx):
        weights = [self.net[0].weight, self.net[2].weight]  # the classifier net[4] is not pruned
        density = sum(int(w.count_nonzero()) for w in weights) / sum(w.numel() for w in weights)
        self.log("val_density", density)
        self.log("val_sparsity", 1 - density)


def guarded(**settings) -> RealTimePruningCallback:
    # paced by a loss that never objects (tolerance far above any change), so every rollback here is the guard's and
    # the cuts grow by a known rule: the guard's mechanics, apart from the search that paces by its verdicts
    pacing = {"pace_by": "loss", "initial_ratio": 0.1, "loss_tolerance": 100.0, "rollback": False, "cooldown": 0}
    return RealTimePruningCallback(**{**pacing, **settings})


@pytest.mark.parametrize(("metric", "mode"), [("val_density", "max"), ("val_sparsity", "min")])
def test_pruning_goes_as_far_as_the_guard_allows_and_keeps_the_sparsest_model_that_held_it(metric, mode):
    # seeded: with another initialisation a cut may be kept between refusals, and the refusals counted below differ
    L.seed_everything(0)
    pruning = guarded(guard=metric, guard_mode=mode, max_drop=0.3)
    quiet_trainer(max_epochs=14, callbacks=[pruning]).fit(DensityNet(), loader(), loader(64))

    kept = [h["sparsity"] for h in pruning.history if h["sparsity"] <= 0.3 + 1e-9]
    refused = [h for h in pruning.history if h["action"] == "rollback"]
    assert 0.2 < pruning.sparsity == pytest.approx(max(kept))
    assert len(refused) == GUARD_PATIENCE  # then no cut can be kept any longer: pruning ends
    assert all(f"`{metric}`" in h["reason"] and "max_drop=0.3" in h["reason"] for h in refused)
    assert refused[-1]["reason"].endswith("pruning ends")
    after = pruning.history[pruning.history.index(refused[-1]) + 1 :]
    assert after and all(h["action"] == "done" and h["sparsity"] == pruning.sparsity for h in after)


def test_the_reference_rises_with_the_metric_and_a_cut_waits_for_a_validation_run():
    guard = Guard("val_acc", "max", max_drop=0.01)
    guard.observe(0.90)
    assert guard.verdict() is Verdict.NO_CUT and guard.reference == 0.90
    guard.observe(0.95)  # the network learned before the first cut: the bar rises
    assert guard.verdict() is Verdict.NO_CUT and guard.reference == 0.95
    guard.after_cut()
    assert guard.verdict() is Verdict.WAITING  # the value seen before the cut does not judge it
    guard.observe(0.935)
    assert guard.verdict() is Verdict.REFUSED and guard.reference == 0.95
    guard.after_cut()
    guard.observe(float("nan"))  # a NaN metric never keeps a cut
    assert guard.verdict() is Verdict.REFUSED
    guard.after_cut()
    guard.observe(0.97)
    assert guard.verdict() is Verdict.KEPT and guard.reference == 0.97 and guard.refused_in_a_row == 0


def test_without_a_metric_every_cut_is_kept_at_once():
    guard = Guard(None)
    guard.after_cut()
    assert not guard.pending and guard.keeps_last_cut() and guard.problems(validation_runs=False) == []


def test_a_cut_no_validation_judged_is_undone_at_the_end(tmp_path):
    # the window covers every epoch, so the last cut comes after the last validation run
    pruning = guarded(guard="val_density", max_drop=1.0, end_epoch=3)
    with pytest.warns(UserWarning, match="no validation run judged it, so the last cut was undone"):
        quiet_trainer(max_epochs=3, callbacks=[pruning]).fit(DensityNet(), loader(), loader(64))
    assert [h["action"] for h in pruning.history] == ["prune", "prune", "prune", "rollback"]
    assert pruning.sparsity == pytest.approx(pruning.history[1]["sparsity"])
    assert pruning.sparsity < pruning.history[2]["sparsity"]
    # the history ends where the model does, and says how many weights came back
    undone = pruning.history[-1]
    assert undone["sparsity"] == pytest.approx(pruning.sparsity)
    assert undone["pruned"] == -pruning.history[2]["pruned"] and "end of training" in undone["reason"]


def test_a_last_cut_the_last_validation_refuses_is_undone_at_the_end():
    # decisions every 2 epochs: the cut after epoch 1 is judged by epoch 2's validation run, and no decision follows
    pruning = guarded(guard="val_density", max_drop=0.05, interval=2)
    with pytest.warns(UserWarning, match="`val_density` refused it, so the last cut was undone"):
        quiet_trainer(max_epochs=3, callbacks=[pruning]).fit(DensityNet(), loader(), loader(64))
    assert [h["action"] for h in pruning.history] == ["prune", "rollback"]
    assert pruning.sparsity == 0 == pruning.history[-1]["sparsity"]


def test_a_missing_guard_metric_names_the_logged_ones():
    pruning = guarded(guard="val_acc")
    with pytest.raises(RuntimeError, match=r"guard metric `val_acc`.*Available metrics: \[.*'val_density'"):
        quiet_trainer(max_epochs=2, num_sanity_val_steps=0, callbacks=[pruning]).fit(DensityNet(), loader(), loader(64))


def test_a_guard_without_validation_warns_at_fit_start_and_cuts_nothing():
    pruning = guarded(guard="val_density")
    with pytest.warns(UserWarning, match="guard='val_density' is read after validation.*nothing will be cut"):
        quiet_trainer(max_epochs=3, callbacks=[pruning]).fit(TinyNet(), loader())
    assert pruning.sparsity == 0.0
    assert all(h["reason"] == "waiting for `val_density` before the first cut" for h in pruning.history[:2])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"guard": 3}, "`guard` must be None or the name of a logged validation metric, got 3"),
        ({"guard": ""}, "`guard` must be None or the name"),
        ({"guard_mode": "up"}, "`guard_mode` must be one of"),
        ({"max_drop": -0.1}, "`max_drop` must be a number in [0, inf]"),
        ({"max_drop": math.nan}, "`max_drop` must be a number"),
    ],
)
def test_bad_guard_settings_name_themselves(settings, message):
    with pytest.raises(ValueError) as error:
        RealTimePruningCallback(**settings)
    assert message in str(error.value)


def test_resume_keeps_the_guards_reference_and_its_pending_cut(tmp_path):
    settings = {"guard": "val_density", "max_drop": 0.3}
    torch.manual_seed(0)
    straight = guarded(**settings)
    quiet_trainer(max_epochs=8, callbacks=[straight]).fit(DensityNet(), loader(), loader(64))

    torch.manual_seed(0)
    first = guarded(**settings)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = quiet_trainer(max_epochs=8, callbacks=[first, checkpoint, CrashAt(3)], enable_checkpointing=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(DensityNet(), loader(), loader(64))
    assert first.guard.pending and first.guard.reference == 1.0

    second = guarded(**settings)
    quiet_trainer(max_epochs=8, callbacks=[second]).fit(
        DensityNet(), loader(), loader(64), ckpt_path=str(tmp_path / "last.ckpt")
    )
    assert [(h["action"], h["sparsity"]) for h in second.history] == [
        (h["action"], h["sparsity"]) for h in straight.history
    ]
    assert second.sparsity == straight.sparsity


def test_step_intervals_judge_each_cut_by_the_validation_run_after_it():
    # 16 steps an epoch, a decision and a validation run every 4 steps
    pruning = guarded(guard="val_density", max_drop=0.3, interval=4, interval_unit="step")
    trainer = quiet_trainer(max_epochs=3, val_check_interval=4, callbacks=[pruning])
    trainer.fit(DensityNet(), loader(), loader(64))
    # the validation run at a decision's step comes after the cut: the next decision judges it, without waiting
    reasons = [h["reason"] for h in pruning.history]
    assert reasons[0] == "waiting for `val_density` before the first cut"
    assert not any("after the last cut" in reason for reason in reasons)
    assert [h["action"] for h in pruning.history].count("rollback") == GUARD_PATIENCE
    assert 0.2 < pruning.sparsity <= 0.3


class UnitsNet(TinyNet):
    """Validation logs the share of the two hidden layers' units still alive (non-zero rows), whether the cut units
    are masked or already removed: structured mode's counterpart of DensityNet."""

    def validation_step(self, batch, batch_idx):
        alive = sum(int(layer.weight.abs().sum(dim=1).count_nonzero()) for layer in (self.net[0], self.net[2]))
        self.log("val_units", alive / 64)


def test_structured_mode_undoes_refused_cuts_and_ends_with_the_last_cut_it_kept():
    torch.manual_seed(0)
    pruning = guarded(mode="structured", guard="val_units", max_drop=0.3)
    module = UnitsNet()
    quiet_trainer(max_epochs=14, callbacks=[pruning]).fit(module, loader(), loader(64))

    refused = [h for h in pruning.history if h["action"] == "rollback"]
    assert len(refused) == GUARD_PATIENCE
    # every refused cut was undone, masked or shrunk: the model ends with the units of the last kept cut
    alive = module.net[0].out_features + module.net[2].out_features
    assert 0.7 <= alive / 64 < 1
    assert pruning.sparsity == pytest.approx(refused[-1]["sparsity"])
    assert any(h["action"] == "prune" and h["sparsity"] == pytest.approx(pruning.sparsity) for h in pruning.history)
    assert int(module.net[0].weight.abs().sum(dim=1).count_nonzero()) == module.net[0].out_features


def test_a_restored_guard_keeps_its_own_settings_and_only_what_they_still_mean():
    saved = Guard("val_acc", "max", max_drop=0.005)
    saved.observe(0.90)
    saved.verdict()
    saved.after_cut()
    saved.observe(0.80)
    assert saved.verdict() == Verdict.REFUSED
    same = Guard("val_acc", "max", max_drop=0.005)
    same.load_state_dict(saved.state_dict())
    assert (same.reference, same.refused_in_a_row) == (0.90, 1)
    # a looser max_drop: the refusal was counted against the old one
    looser = Guard("val_acc", "max", max_drop=0.2)
    looser.load_state_dict(saved.state_dict())
    assert (looser.max_drop, looser.reference, looser.refused_in_a_row) == (0.2, 0.90, 0)
    # another metric: a reference in val_acc's units means nothing to val_loss
    other = Guard("val_loss", "min", max_drop=0.1)
    other.load_state_dict(saved.state_dict())
    assert (other.metric, other.reference, other.refused_in_a_row) == ("val_loss", None, 0)
