"""RealTimePruningCallback in real Trainer runs: a drop-in for any LightningModule."""

import csv
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_prune import ClassificationModule, RealTimePruningCallback
from lightning_prune.models import LSTMClassifier

from helpers import CrashAt, TinyNet, loader, quiet_trainer


class ZeroChecker(Callback):
    """Before every batch (so before every forward): every cut weight is exactly zero. (The optimizer's state for it
    is zeroed at the cut but not kept at zero: the weight is re-masked after every step, whatever the optimizer does.)
    """

    def __init__(self, pruning: RealTimePruningCallback) -> None:
        self.pruning = pruning
        self.checked = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        masks = self.pruning.masks
        for name, weight in masks.weights.items():
            cut = masks.pruned[name]
            if cut.any():
                assert (weight[cut] == 0).all(), f"{name}: a cut weight moved"
                self.checked += 1


def test_drop_in_for_any_module_with_its_own_loss_name_and_no_validation():
    L.seed_everything(0)
    pruning = RealTimePruningCallback(monitor="objective", target_sparsity=0.7, initial_ratio=0.2)
    checker = ZeroChecker(pruning)
    trainer = quiet_trainer(max_epochs=5, callbacks=[pruning, checker])
    trainer.fit(TinyNet(), loader())
    assert pruning.sparsity == pytest.approx(0.7, abs=1e-3)
    assert checker.checked > 0
    assert [h["epoch"] for h in pruning.history] == [0, 1, 2, 3, 4]
    assert pruning.history[-1]["action"] == "done"
    # the classifier (last Linear) and biases are untouched
    model = trainer.lightning_module.net
    assert (model[4].weight != 0).all() and (model[0].bias != 0).all()


def test_missing_monitor_names_it_and_lists_the_available_keys():
    trainer = quiet_trainer(max_epochs=1, callbacks=[RealTimePruningCallback(monitor="val_loss")])
    with pytest.raises(RuntimeError, match=r"`val_loss`.*Available metrics: \['objective'\]"):
        trainer.fit(TinyNet(), loader())


def test_history_records_the_epoch_mean_of_the_monitored_loss():
    class Recorder(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            self.epoch_mean = float(trainer.callback_metrics["objective"])

    recorder = Recorder()
    pruning = RealTimePruningCallback(monitor="objective")
    quiet_trainer(max_epochs=1, callbacks=[pruning, recorder]).fit(TinyNet(), loader())
    assert pruning.history[0]["loss"] == pytest.approx(recorder.epoch_mean)


def test_two_layer_lstm_weights_are_pruned():
    L.seed_everything(0)
    tokens = torch.randint(1, 50, (64, 12))
    labels = (tokens[:, 0] > 25).long()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens, labels), batch_size=16)
    module = ClassificationModule(LSTMClassifier(vocab_size=50, embed_dim=8, hidden_size=16, num_layers=2))
    pruning = RealTimePruningCallback(target_sparsity=0.5, initial_ratio=0.3)
    quiet_trainer(max_epochs=3, callbacks=[pruning]).fit(module, data)
    lstm = module.backbone.lstm
    for name in ("weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"):
        assert (getattr(lstm, name) == 0).float().mean() > 0.2, name
    assert (module.backbone.embedding.weight[1:] != 0).all() and (module.backbone.fc.weight != 0).all()
    assert pruning.sparsity == pytest.approx(0.5, abs=1e-3)


class StateProbe(Callback):
    """Records the pruning callback's state when training (re)starts."""

    def __init__(self, pruning: RealTimePruningCallback) -> None:
        self.pruning = pruning

    def on_train_start(self, trainer, pl_module):
        self.history = [dict(h) for h in self.pruning.history]
        self.masks = {k: v.clone() for k, v in self.pruning.masks.pruned.items()}
        self.ratio = self.pruning.ratio
        self.sparsity = self.pruning.sparsity


def test_resume_after_a_crash_continues_with_the_same_masks_ratio_and_history(tmp_path):
    L.seed_everything(0)
    settings = {"monitor": "objective", "target_sparsity": 0.8, "initial_ratio": 0.1}
    first = RealTimePruningCallback(**settings)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = quiet_trainer(max_epochs=6, callbacks=[first, checkpoint, CrashAt(3)], enable_checkpointing=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(TinyNet(), loader())
    assert [h["epoch"] for h in first.history] == [0, 1, 2]

    second = RealTimePruningCallback(**settings)
    probe = StateProbe(second)
    checker = ZeroChecker(second)
    trainer = quiet_trainer(max_epochs=6, callbacks=[second, probe, checker], default_root_dir=tmp_path)
    trainer.fit(TinyNet(), loader(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert probe.history == first.history
    assert probe.ratio == first.ratio and probe.sparsity == first.sparsity
    for name, mask in first.masks.pruned.items():
        assert torch.equal(probe.masks[name], mask)
    assert [h["epoch"] for h in second.history] == [0, 1, 2, 3, 4, 5]
    assert checker.checked > 0
    assert second.sparsity == pytest.approx(0.8, abs=1e-3)


def test_a_run_resumed_with_a_higher_target_prunes_on_to_it_and_says_what_changed(tmp_path):
    L.seed_everything(0)
    first = RealTimePruningCallback(monitor="objective", target_sparsity=0.5, initial_ratio=0.3, end_epoch=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    quiet_trainer(max_epochs=3, callbacks=[first, checkpoint], enable_checkpointing=True).fit(TinyNet(), loader())
    assert first.history[-1]["action"] == "done" and first.sparsity == pytest.approx(0.5, abs=1e-3)

    second = RealTimePruningCallback(monitor="objective", target_sparsity=0.8, initial_ratio=0.3, end_epoch=5)
    with pytest.warns(UserWarning, match=r"changed settings.*target_sparsity=0.8 \(was 0.5\)"):
        quiet_trainer(max_epochs=6, callbacks=[second]).fit(TinyNet(), loader(), ckpt_path=tmp_path / "last.ckpt")
    assert second.history[:3] == first.history
    assert second.sparsity == pytest.approx(0.8, abs=1e-3)


def test_a_run_resumed_with_more_epochs_stretches_the_default_window_and_says_so(tmp_path):
    L.seed_everything(0)
    # at most 30% of what is left per interval: 90% needs 7 intervals, more than the first run's window holds
    settings = {"monitor": "objective", "target_sparsity": 0.9, "initial_ratio": 0.05, "max_ratio": 0.3}
    first = RealTimePruningCallback(**settings)  # end_epoch unset: 80% of max_epochs=5, so 4
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = quiet_trainer(max_epochs=5, callbacks=[first, checkpoint, CrashAt(2)], enable_checkpointing=True)
    with pytest.warns(UserWarning, match="cannot be reached"), pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(TinyNet(), loader())
    assert first.end_epoch == 4

    second = RealTimePruningCallback(**settings)
    with pytest.warns(UserWarning, match=r"end_epoch=8 \(was 4; max_epochs=10\)"):
        quiet_trainer(max_epochs=10, callbacks=[second]).fit(TinyNet(), loader(), ckpt_path=tmp_path / "last.ckpt")
    assert second.end_epoch == 8
    assert max(h["epoch"] for h in second.history if h["pruned"] > 0) >= 4  # cuts past the old window's end
    assert second.sparsity == pytest.approx(0.9, abs=1e-3)


def test_non_finite_loss_pauses_with_a_warning():
    pruning = RealTimePruningCallback(monitor="watch", initial_ratio=0.1)
    module = TinyNet(scripted={0: 1.0, 1: float("nan"), 2: 1.0})
    with pytest.warns(UserWarning, match="non-finite.*NaN"):
        quiet_trainer(max_epochs=3, callbacks=[pruning]).fit(module, loader())
    actions = [h["action"] for h in pruning.history]
    assert actions[1] == "pause"
    assert pruning.history[1]["sparsity"] == pruning.history[0]["sparsity"] > 0


def test_a_loss_jump_rolls_back_the_last_cut():
    pruning = RealTimePruningCallback(monitor="watch", initial_ratio=0.2, growth=1.0, cooldown=1)
    module = TinyNet(scripted={0: 1.0, 1: 1.0, 2: 1.5, 3: 1.5, 4: 1.5})
    quiet_trainer(max_epochs=5, callbacks=[pruning]).fit(module, loader())
    actions = [h["action"] for h in pruning.history]
    assert actions[:4] == ["prune", "prune", "rollback", "pause"]
    assert pruning.history[2]["sparsity"] == pytest.approx(pruning.history[0]["sparsity"], abs=1e-9)
    assert pruning.history[2]["pruned"] == -pruning.history[1]["pruned"]


def test_nothing_to_prune_is_a_clear_error():
    class ClassifierOnly(TinyNet):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(16, 4)

    trainer = quiet_trainer(max_epochs=1, callbacks=[RealTimePruningCallback(monitor="objective")])
    with pytest.raises(ValueError, match="found nothing to prune"):
        trainer.fit(ClassifierOnly(), loader())


def test_step_intervals():
    pruning = RealTimePruningCallback(monitor="objective", interval=4, interval_unit="step", end_epoch=1)
    module = TinyNet(per_step=True)
    quiet_trainer(max_epochs=2, callbacks=[pruning]).fit(module, loader())  # 16 steps an epoch
    steps = [h["step"] for h in pruning.history]
    assert steps == [4, 8, 12, 16, 20, 24, 28, 32]
    assert [h["action"] for h in pruning.history][4:] == ["done"] * 4


def test_metrics_are_logged_once_per_interval_under_the_documented_names(tmp_path):
    pruning = RealTimePruningCallback(monitor="objective", target_sparsity=0.5, log_layers=True)
    logger = CSVLogger(tmp_path, name="run")
    quiet_trainer(max_epochs=3, callbacks=[pruning], logger=logger).fit(TinyNet(), loader())
    with open(f"{logger.log_dir}/metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("pruning/sparsity")]
    expected = {
        "pruning/sparsity", "pruning/ratio", "pruning/params_nonzero", "pruning/params_total", "pruning/action",
        "grad_norm/total", "pruning/flops", "pruning/layer/net.0.weight", "pruning/layer/net.2.weight",
    }  # fmt: skip
    assert expected <= set(rows[0])
    assert not any(key.endswith(("_epoch", "_step")) for key in rows[0] if key.startswith(("pruning", "grad")))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    assert float(rows[-1]["pruning/sparsity"]) == pytest.approx(pruning.sparsity, abs=1e-6)
    total = sum(p.numel() for p in TinyNet().parameters())
    assert float(rows[0]["pruning/params_total"]) == total


def test_sparsity_is_counted_from_the_weights():
    pruning = RealTimePruningCallback(monitor="objective")
    module = TinyNet()
    quiet_trainer(max_epochs=1, callbacks=[pruning]).fit(module, loader())
    before = pruning.sparsity
    with torch.no_grad():
        module.net[2].weight[0].zero_()  # 32 more zeros, outside the callback's knowledge
    total = 16 * 32 + 32 * 32
    assert pruning.sparsity * total == pytest.approx(
        before * total + 32 - int((pruning.masks.pruned["net.2.weight"][0]).sum())
    )


def test_two_instances_coexist_in_one_checkpoint(tmp_path):
    first = RealTimePruningCallback(monitor="objective", parameters=["net.0.weight"], target_sparsity=0.5)
    second = RealTimePruningCallback(monitor="objective", parameters=["net.2.weight"], target_sparsity=0.3)
    assert first.state_key != second.state_key
    trainer = quiet_trainer(max_epochs=2, callbacks=[first, second], default_root_dir=tmp_path)
    trainer.fit(TinyNet(), loader())
    trainer.save_checkpoint(tmp_path / "both.ckpt")
    states = torch.load(tmp_path / "both.ckpt", weights_only=True)["callbacks"]
    assert {first.state_key, second.state_key} <= set(states)
    assert first.sparsity == pytest.approx(0.5, abs=1e-2) and second.sparsity == pytest.approx(0.3, abs=1e-2)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"mode": "channels"}, "mode"),
        ({"importance": "random"}, "importance"),
        ({"interval_unit": "batch"}, "interval_unit"),
        ({"interval": 0}, "interval"),
        ({"start_epoch": -1}, "start_epoch"),
        ({"start_epoch": 3, "end_epoch": 3}, "end_epoch"),
        ({"min_layer_density": 1.5}, "min_layer_density"),
        ({"target_sparsity": 1.0}, "target_sparsity"),
        ({"max_ratio": 2.0}, "max_ratio"),
        ({"monitor": ""}, "monitor"),
        ({"exclude": "fc"}, "exclude"),
        ({"saliency_beta": 1.0}, "saliency_beta"),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"`{name}`"):
        RealTimePruningCallback(**kwargs)


def test_without_max_epochs_the_window_follows_max_steps_or_must_be_given():
    # 16 batches an epoch: 20 steps take 2 epochs, of which the default window is the first 80%
    pruning = RealTimePruningCallback(monitor="objective", target_sparsity=0.5)
    quiet_trainer(max_epochs=-1, max_steps=20, callbacks=[pruning]).fit(TinyNet(), loader())
    assert pruning.end_epoch == 1 and pruning.sparsity == pytest.approx(0.5, abs=1e-3)
    endless = quiet_trainer(max_epochs=-1, max_steps=-1, callbacks=[RealTimePruningCallback(monitor="objective")])
    with pytest.raises(ValueError, match="needs `end_epoch` when the Trainer has no `max_epochs`"):
        endless.fit(TinyNet(), loader())


def test_no_warnings_from_a_plain_run():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        quiet_trainer(max_epochs=2, callbacks=[RealTimePruningCallback(monitor="objective")]).fit(TinyNet(), loader())


def test_saliency_is_only_accumulated_where_it_still_weighs_in_the_decision():
    # beta 0.9: a step 40 steps before the decision keeps e^-4 of its weight; the earlier ones are skipped
    every_step = RealTimePruningCallback(monitor="objective", saliency_beta=0.9, saliency_every=1)
    quiet_trainer(max_epochs=1, callbacks=[every_step]).fit(TinyNet(), loader(samples=64 * 16))  # 64 steps
    assert every_step.saliency.updates == 40
    # by default every 16th of them: steps 32 and 48
    sampled = RealTimePruningCallback(monitor="objective", saliency_beta=0.9)
    quiet_trainer(max_epochs=1, callbacks=[sampled]).fit(TinyNet(), loader(samples=64 * 16))
    assert sampled.saliency.updates == 2
    assert sampled.history[0]["grad_norm"] is not None


def test_a_target_out_of_reach_is_said_at_fit_start():
    # 2 intervals at max_ratio 0.5 remove at most 75% of the weights
    pruning = RealTimePruningCallback(monitor="objective", target_sparsity=0.9, max_ratio=0.5, end_epoch=2)
    with pytest.warns(UserWarning, match=r"target_sparsity=0.9 cannot be reached.*at most 0.7500.*max_ratio"):
        quiet_trainer(max_epochs=3, callbacks=[pruning]).fit(TinyNet(), loader())
    assert pruning.sparsity == pytest.approx(0.75, abs=1e-3)


def test_a_target_above_what_min_layer_density_leaves_is_said_and_pruning_stops_there():
    pruning = RealTimePruningCallback(monitor="objective", target_sparsity=0.99, max_ratio=1.0, min_layer_density=0.1)
    with pytest.warns(UserWarning, match=r"target_sparsity=0.99 cannot be reached while min_layer_density=0.1.*0.9000"):
        quiet_trainer(max_epochs=3, callbacks=[pruning]).fit(TinyNet(), loader())
    assert pruning.sparsity == pytest.approx(0.9, abs=1e-2)
    assert min(1 - s for s in pruning.masks.layer_sparsity().values()) >= 0.1 - 1e-9
