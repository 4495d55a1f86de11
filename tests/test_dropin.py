"""The callback dropped into modules nobody here wrote, with faults and bad settings: it works, or fails early and
clearly.

Each test is a regression test for one way the callback failed a new user (issue "drop-in anywhere", items 1-9).
"""

import csv
import math
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.nn import functional as F

from lightning_prune import RealTimePruningCallback
from lightning_prune.importance import Saliency
from lightning_prune.signals import PacingSignals

from helpers import CrashAt, TinyNet, loader, quiet_trainer


class TargetInForward(L.LightningModule):
    """Like Lightning's demo Transformer: ``forward(inputs, target)``, and nothing logged."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, inputs, target):
        return F.cross_entropy(self.body(inputs), target)

    def training_step(self, batch, batch_idx):
        return self(*batch)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class NoForward(L.LightningModule):
    """No ``forward`` at all: ``training_step`` calls the network itself, and returns a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return {"loss": F.cross_entropy(self.net(x), y)}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


# -- 1. unstructured pruning needs no forward pass; FLOPs are a read-out -------------------------------------------


def test_a_forward_that_takes_the_target_is_pruned_and_counted():
    pruning = RealTimePruningCallback(target_sparsity=0.5, initial_ratio=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*(workers|logging interval).*")
        quiet_trainer(max_epochs=3, callbacks=[pruning]).fit(TargetInForward(), loader())
    assert pruning.sparsity == pytest.approx(0.5, abs=1e-3)
    # the whole batch (inputs and target) ran the forward: FLOPs were counted
    assert pruning.pruner.flops.count is not None


def test_a_module_without_forward_is_pruned_and_flops_are_counted_through_the_network_it_calls(tmp_path):
    pruning = RealTimePruningCallback(target_sparsity=0.5, initial_ratio=0.3)
    logger = CSVLogger(tmp_path, name="run")
    quiet_trainer(max_epochs=3, callbacks=[pruning], logger=logger).fit(NoForward(), loader())
    assert pruning.sparsity == pytest.approx(0.5, abs=1e-3)
    with open(f"{logger.log_dir}/metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("pruning/sparsity")]
    # net: Linear 16->32 (weights and biases, 544 MACs, half its weights gone), ReLU (32), the classifier (132)
    assert len(rows) == 3 and float(rows[-1]["pruning/flops"]) == pytest.approx(544 / 2 + 32 + 132)


class Scaled(nn.Module):
    """A network whose forward needs more than the batch holds."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x, *, scale):
        return self.fc2(F.relu(self.fc1(x * scale)))


def test_flops_of_a_model_no_example_input_runs_are_skipped_with_one_warning(tmp_path):
    class NeedsAScale(NoForward):
        def __init__(self) -> None:
            super().__init__()
            self.net = Scaled()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return {"loss": F.cross_entropy(self.net(x, scale=2.0), y)}

    pruning = RealTimePruningCallback(target_sparsity=0.5, initial_ratio=0.3)
    logger = CSVLogger(tmp_path, name="run")
    with pytest.warns(UserWarning, match="FLOPs are not logged") as caught:
        quiet_trainer(max_epochs=3, callbacks=[pruning], logger=logger).fit(NeedsAScale(), loader())
    assert sum("FLOPs are not logged" in str(w.message) for w in caught) == 1
    assert pruning.sparsity == pytest.approx(0.5, abs=1e-3)
    with open(f"{logger.log_dir}/metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("pruning/sparsity")]
    assert len(rows) == 3 and all(not row.get("pruning/flops") for row in rows)


# -- 5. the pacing loss: what training_step returns, or a logged metric averaged over the interval ----------------


def test_a_module_that_logs_nothing_is_paced_by_the_loss_training_step_returns():
    losses = []

    class Silent(TinyNet):
        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            losses.append(float(loss))
            return loss

    pruning = RealTimePruningCallback(target_sparsity=0.5)
    quiet_trainer(max_epochs=2, callbacks=[pruning]).fit(Silent(), loader())
    per_epoch = len(losses) // 2
    assert pruning.history[0]["loss"] == pytest.approx(sum(losses[:per_epoch]) / per_epoch, rel=1e-5)
    assert pruning.history[1]["loss"] == pytest.approx(sum(losses[per_epoch:]) / per_epoch, rel=1e-5)


def test_a_metric_logged_per_step_only_is_averaged_over_the_interval_not_read_at_its_last_step():
    values = []

    class StepLogged(TinyNet):
        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.log("objective", loss)  # Lightning's default in training_step: on_step only
            values.append(float(loss))
            return loss

    pruning = RealTimePruningCallback(monitor="objective")
    quiet_trainer(max_epochs=1, callbacks=[pruning]).fit(StepLogged(), loader())
    assert pruning.history[0]["loss"] == pytest.approx(sum(values) / len(values), rel=1e-5)
    assert pruning.history[0]["loss"] != pytest.approx(values[-1], rel=1e-3)


def test_step_intervals_with_a_metric_logged_per_epoch_ask_for_per_step_logging():
    pruning = RealTimePruningCallback(monitor="objective", interval=4, interval_unit="step")
    with pytest.raises(RuntimeError, match=r"no per-step value.*on_step=True") as raised:
        quiet_trainer(max_epochs=1, callbacks=[pruning]).fit(TinyNet(per_step=False), loader())
    assert "on_epoch=True" not in str(raised.value)


def test_a_training_step_without_a_loss_fails_at_the_first_batch_saying_what_to_do():
    class ReturnsNothing(TinyNet):
        def training_step(self, batch, batch_idx):
            super().training_step(batch, batch_idx)

    seen = []

    class Count(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch_idx)

    with pytest.raises(RuntimeError, match=r"returned nothing.*`monitor="):
        quiet_trainer(max_epochs=1, callbacks=[RealTimePruningCallback(), Count()]).fit(ReturnsNothing(), loader())
    assert seen == [0]


# -- 6. every setting is checked, and the error names it ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"target_sparsity": "0.9"}, "target_sparsity"),
        ({"initial_ratio": None}, "initial_ratio"),
        ({"growth": "2"}, "growth"),
        ({"min_layer_density": "0.5"}, "min_layer_density"),
        ({"saliency_beta": "0.9"}, "saliency_beta"),
        ({"min_layer_density": True}, "min_layer_density"),
        ({"saliency_beta": True}, "saliency_beta"),
        ({"growth": math.nan}, "growth"),
        ({"shrink": math.inf}, "shrink"),
        ({"loss_tolerance": math.inf}, "loss_tolerance"),
        ({"grad_damping": math.nan}, "grad_damping"),
        ({"max_ratio": None}, "max_ratio"),
        ({"interval": True}, "interval"),
        ({"interval": 2.0}, "interval"),
        ({"cooldown": None}, "cooldown"),
        ({"rollback": "no"}, "rollback"),
        ({"monitor": 3}, "monitor"),
        ({"exclude": [1]}, "exclude"),
        ({"parameters": "net.0.weight"}, "parameters"),
        ({"mode": None}, "mode"),
        ({"verbose": "yes"}, "verbose"),
        ({"end_epoch": "3"}, "end_epoch"),
    ],
)
def test_a_bad_setting_of_any_type_names_itself(kwargs, name):
    with pytest.raises(ValueError, match=rf"`{name}`"):  # a wrong type is a TypeError that is also a ValueError
        RealTimePruningCallback(**kwargs)
    with pytest.raises(TypeError if not isinstance(next(iter(kwargs.values())), float) else ValueError):
        RealTimePruningCallback(**kwargs)


def test_an_exclude_that_leaves_nothing_is_blamed_on_exclude():
    pruning = RealTimePruningCallback(exclude=["net.*"])
    with pytest.raises(ValueError, match=r"`exclude` \['net\.\*'\] removes every prunable weight"):
        quiet_trainer(max_epochs=1, callbacks=[pruning]).fit(TinyNet(), loader())


def test_a_window_that_never_opens_is_said_at_the_start_with_what_to_change():
    pruning = RealTimePruningCallback(start_epoch=5, end_epoch=8)
    with pytest.warns(UserWarning, match=r"start_epoch=5 is at or past the Trainer's max_epochs=3.*Lower `start_"):
        quiet_trainer(max_epochs=3, callbacks=[pruning]).fit(TinyNet(), loader())
    assert pruning.sparsity == 0.0
    steps = RealTimePruningCallback(interval=100, interval_unit="step", end_epoch=2)
    with pytest.warns(UserWarning, match=r"first decision would come after 100 steps.*ends after 32"):
        quiet_trainer(max_epochs=3, callbacks=[steps]).fit(TinyNet(), loader())


# -- 7. a step with non-finite gradients leaves the statistics alone ----------------------------------------------


class SkipsBadSteps(torch.optim.Adam):
    """What AMP's GradScaler does: a step whose gradients are not finite is not taken."""

    skip_next = False

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        if not self.skip_next:
            super().step()
        self.skip_next = False
        return loss


class OneBadStep(TinyNet):
    """At ``step`` the optimizer skips its step; with ``poison`` the gradients are NaN and inf there (what an fp16
    overflow gives GradScaler), without it they are the normal ones. Both runs train identically."""

    def __init__(self, step: int, poison: bool) -> None:
        super().__init__(loss_name="objective")
        self.bad_step, self.poison = step, poison

    def on_after_backward(self):
        if self.global_step != self.bad_step:
            return
        if self.poison:
            for p in self.parameters():
                p.grad.fill_(math.nan)
                p.grad.view(-1)[0] = math.inf
        self.trainer.optimizers[0].skip_next = True

    def configure_optimizers(self):
        return SkipsBadSteps(self.parameters(), lr=self.lr)


def test_a_step_with_non_finite_gradients_enters_neither_saliency_nor_gradient_norm(tmp_path):
    masks, histories = {}, {}
    for poison in (False, True):
        L.seed_everything(0)
        pruning = RealTimePruningCallback(target_sparsity=0.7, initial_ratio=0.3, saliency_every=1)
        logger = CSVLogger(tmp_path, name=str(poison))
        quiet_trainer(max_epochs=4, callbacks=[pruning], logger=logger).fit(OneBadStep(20, poison), loader())
        masks[poison] = {n: m.clone() for n, m in pruning.masks.pruned.items()}
        histories[poison] = pruning.history
        with open(f"{logger.log_dir}/metrics.csv") as handle:
            skipped = [float(r["pruning/skipped_steps"]) for r in csv.DictReader(handle) if r.get("pruning/action")]
        assert skipped == ([0.0, 1.0, 1.0, 1.0] if poison else [0.0] * 4)
    assert all(math.isfinite(h["grad_norm"]) for h in histories[True] if h["grad_norm"] is not None)
    assert [h["sparsity"] for h in histories[False]] == [h["sparsity"] for h in histories[True]]
    # the clean run also saw step 20's gradient (one of ~80 in the average): the cut weights are all but the same
    for name, clean in masks[False].items():
        poisoned = masks[True][name]
        assert (clean & poisoned).sum() / (clean | poisoned).sum() > 0.95, name


def test_a_skipped_step_leaves_the_running_saliency_as_if_it_had_not_happened():
    w = nn.Parameter(torch.ones(3))
    signals = PacingSignals(monitor=None, per_step=False)
    kept, reference = Saliency({"w": w}, "gradient", beta=0.9), Saliency({"w": w}, "gradient", beta=0.9)
    for grad in ([1.0, 2.0, 3.0], [math.nan, math.inf, 0.0], [3.0, 2.0, 1.0]):
        w.grad = torch.tensor(grad)
        if signals.after_gradients([w]):
            kept.update()
        if all(math.isfinite(g) for g in grad):
            reference.update()
    assert torch.equal(kept.scores()["w"], reference.scores()["w"]) and signals.skipped_steps == 1
    assert float(signals.take_grad_norm()) == pytest.approx((14**0.5 + 14**0.5) / 2)


# -- 8. a resume inside an interval continues exactly like the run that never stopped ------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"interval": 2, "target_sparsity": 0.8, "initial_ratio": 0.2},  # the crash falls between epochs 2 and 3
        {"interval": 5, "interval_unit": "step", "target_sparsity": 0.8, "initial_ratio": 0.2, "end_epoch": 5},
    ],
    ids=["two-epoch interval", "step interval"],
)
def test_a_resume_inside_an_interval_continues_exactly(settings, tmp_path):
    def run(callbacks, ckpt_path=None):
        L.seed_everything(0)
        pruning = RealTimePruningCallback(**settings)
        trainer = quiet_trainer(max_epochs=6, callbacks=[pruning, *callbacks], default_root_dir=tmp_path,
                                enable_checkpointing=bool(callbacks))  # fmt: skip
        module = TinyNet(per_step=True)
        try:
            trainer.fit(module, loader(), ckpt_path=ckpt_path)
        except RuntimeError as err:
            assert "simulated crash" in str(err)
        return pruning

    uninterrupted = run([])
    run([ModelCheckpoint(dirpath=tmp_path, save_last=True), CrashAt(3)])
    resumed = run([], ckpt_path=tmp_path / "last.ckpt")
    assert resumed.history == uninterrupted.history
    assert resumed.ratio == uninterrupted.ratio
    assert all(torch.equal(resumed.masks.pruned[n], m) for n, m in uninterrupted.masks.pruned.items())


# -- 9. exactly one record per decision ------------------------------------------------------------------------------


def test_step_intervals_log_one_record_per_decision(tmp_path):
    pruning = RealTimePruningCallback(interval=5, interval_unit="step", target_sparsity=0.5, initial_ratio=0.2)
    logger = CSVLogger(tmp_path, name="run")
    trainer = quiet_trainer(max_epochs=2, callbacks=[pruning], logger=logger, log_every_n_steps=1)
    trainer.fit(TinyNet(per_step=True), loader())
    with open(f"{logger.log_dir}/metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("pruning/action")]
    assert [int(row["step"]) for row in rows] == [h["step"] for h in pruning.history] == [5, 10, 15, 20, 25, 30]
    assert "pruning/sparsity" in trainer.callback_metrics


# -- 4. a shrunk checkpoint loads into the user's own class -----------------------------------------------------------


def test_load_pruned_takes_a_shrunk_checkpoint_into_a_fresh_module_of_the_users_class(tmp_path):
    from lightning_prune import load_pruned

    L.seed_everything(0)
    pruning = RealTimePruningCallback(mode="structured", target_sparsity=0.5, initial_ratio=0.3)
    trained = TinyNet()
    trainer = quiet_trainer(max_epochs=3, callbacks=[pruning, ModelCheckpoint(dirpath=tmp_path, save_last=True)],
                            enable_checkpointing=True)  # fmt: skip
    trainer.fit(trained, loader())
    assert trained.net[0].out_features < 32  # shrunk while training
    with pytest.raises(RuntimeError, match="size mismatch"):  # what Lightning alone does with it
        TinyNet.load_from_checkpoint(tmp_path / "last.ckpt")
    x = torch.randn(5, 16)
    reloaded = load_pruned(TinyNet(), tmp_path / "last.ckpt")
    assert torch.equal(reloaded(x), trained(x))
    # the network alone, found under its prefix (`net.`) in the checkpoint
    net = load_pruned(TinyNet().net, tmp_path / "last.ckpt")
    assert torch.equal(net(x), trained.net(x))
    with pytest.raises(ValueError, match="do not fit"):
        load_pruned(nn.Sequential(nn.Linear(3, 3)), tmp_path / "last.ckpt")
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        load_pruned(TinyNet(), tmp_path / "missing.ckpt")
