"""The callback beside the Trainer settings and callbacks users already have: tiny models, real assertions.

Each habit is tried as a user would write it: gradient accumulation and clipping, validation twice an epoch, an
IterableDataset without a length, EarlyStopping and StochasticWeightAveraging beside it, weights-only checkpoints
loaded with ``load_pruned``, ``trainer.test`` / ``predict`` after fit, ``torch.compile`` inside the module, a frozen
backbone, and on a timm model ``pace_by="damage"`` and guard mode. Each checks what the user relies on: training
completes, the target is reached, cut weights stay zero, and what the habit itself promises still holds.
"""

import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, StochasticWeightAveraging
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, IterableDataset

from lightning_prune import ClassificationModule, RealTimePruningCallback, load_pruned

from helpers import (
    Classifier,
    ZeroChecker,
    dense_prunable_count,
    loader,
    measured_sparsity,
    quiet_trainer,
    teacher_data,
)

TARGET = 0.5


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def pruning_callback(mode: str = "unstructured", **settings) -> RealTimePruningCallback:
    settings = {"target_sparsity": TARGET, "initial_ratio": 0.3, "max_ratio": 0.5, "end_epoch": 2, **settings}
    return RealTimePruningCallback(mode=mode, **settings)


def fit(module: L.LightningModule, pruning: RealTimePruningCallback, data=None, val=None, **trainer_settings):
    checker = ZeroChecker(pruning)
    callbacks = [pruning, checker, *trainer_settings.pop("callbacks", [])]
    trainer = quiet_trainer(max_epochs=trainer_settings.pop("max_epochs", 3), callbacks=callbacks, **trainer_settings)
    trainer.fit(module, data if data is not None else loader(64), val)
    return trainer, checker


def reached(pruning: RealTimePruningCallback, module: nn.Module, dense: nn.Module) -> bool:
    """The target is reached, and cb.sparsity is what the weights show."""
    measured = measured_sparsity(module, dense_prunable_count(dense))
    return abs(pruning.sparsity - measured) < 1e-9 and abs(measured - TARGET) <= 0.05


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["unstructured", "structured"])
def test_gradient_accumulation_scores_each_optimizer_step_and_reaches_the_target(mode):
    L.seed_everything(0)
    module, pruning = Classifier(mlp()), pruning_callback(mode)
    trainer, checker = fit(module, pruning, accumulate_grad_batches=2)
    assert trainer.global_step == 3 * 2  # 4 batches an epoch, one optimizer step per 2
    assert reached(pruning, module, Classifier(mlp())) and checker.checked > 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["unstructured", "structured"])
def test_gradient_clipping_keeps_cut_weights_at_zero(mode):
    L.seed_everything(0)
    module, pruning = Classifier(mlp()), pruning_callback(mode)
    _, checker = fit(module, pruning, gradient_clip_val=0.01)
    assert reached(pruning, module, Classifier(mlp())) and checker.checked > 0


@pytest.mark.timeout(60)
def test_validation_twice_an_epoch_leaves_one_decision_per_epoch():
    L.seed_everything(0)
    module, pruning = ClassificationModule(mlp(), lr=1e-2), pruning_callback()
    trainer, _ = fit(module, pruning, val=loader(32, seed=1), val_check_interval=0.5, num_sanity_val_steps=0)
    assert [h["epoch"] for h in pruning.history] == [0, 1, 2]
    assert "val_acc" in trainer.callback_metrics and reached(pruning, module, ClassificationModule(mlp()))


class Stream(IterableDataset):
    """Batches of the teacher data, without ``__len__``: the Trainer cannot know an epoch's length."""

    def __iter__(self):
        data = teacher_data(64)
        yield from zip(data.tensors[0], data.tensors[1], strict=True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["unstructured", "structured"])
def test_an_iterable_dataset_without_a_length_is_pruned_per_epoch(mode):
    L.seed_everything(0)
    module, pruning = Classifier(mlp()), pruning_callback(mode)
    _, checker = fit(module, pruning, data=DataLoader(Stream(), batch_size=16))
    assert len(pruning.history) == 3 and reached(pruning, module, Classifier(mlp())) and checker.checked > 0


@pytest.mark.timeout(60)
def test_early_stopping_ends_the_fit_with_a_compact_model_that_computes_what_it_did():
    L.seed_everything(0)
    module = ClassificationModule(mlp(), lr=1e-2)
    pruning = pruning_callback("structured", end_epoch=8)
    stop = EarlyStopping(monitor="val_loss", patience=0, min_delta=10.0)  # the first epoch that does not improve by 10
    trainer, _ = fit(module, pruning, val=loader(32, seed=1), callbacks=[stop], max_epochs=10)
    assert stop.stopped_epoch > 0 and trainer.current_epoch < 10
    # the fit ended before the target's epoch: what was cut is removed, and the model computes what it did masked
    assert module.backbone[0].out_features < 32 or module.backbone[2].out_features < 32
    assert pruning.sparsity == pytest.approx(measured_sparsity(module, dense_prunable_count(mlp())))
    x = teacher_data(8).tensors[0]
    with torch.no_grad():
        assert torch.allclose(pruning.export(module.eval())(x), module(x), atol=1e-5)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["unstructured", "structured"])
def test_stochastic_weight_averaging_averages_a_model_whose_cut_weights_stay_zero(mode):
    L.seed_everything(0)
    module = Classifier(mlp())
    # the window (decisions after epochs 0 and 1) ends before SWA averages (swa_epoch_start=3: from the start of epoch
    # 2, 0-based): the average keeps the cuts at zero. A window that ends later loses its last cuts (the average
    # holds their old values, copied back at the end): see docs/works-with.md
    pruning = pruning_callback(mode, shrink_when="end")
    swa = StochasticWeightAveraging(swa_lrs=1e-3, swa_epoch_start=3)
    fit(module, pruning, callbacks=[swa], max_epochs=4)
    assert swa.n_averaged is not None and int(swa.n_averaged) >= 2
    assert reached(pruning, module, Classifier(mlp()))
    for name, cut in pruning.masks.pruned.items():  # the averaged weights Lightning copied back in
        assert (pruning.masks.weights[name][cut] == 0).all(), name
    if mode == "structured":
        x = teacher_data(8).tensors[0]
        exported = pruning.export(module.eval())
        assert sum(p.numel() for p in exported.parameters()) < sum(p.numel() for p in mlp().parameters())
        with torch.no_grad():
            assert torch.allclose(exported(x), module(x), atol=1e-5)


@pytest.mark.timeout(90)
def test_stochastic_weight_averaging_inside_the_pruning_window_is_said_at_the_start():
    # averaging from epoch 1 (0-based) while the window prunes after epochs 0 and 1: the last cut would be averaged over
    pruning = pruning_callback("unstructured")
    with pytest.warns(
        UserWarning, match=r"averages from epoch 1, inside the pruning window \(end_epoch=2\).*end_epoch <= 1"
    ):
        fit(Classifier(mlp()), pruning, callbacks=[StochasticWeightAveraging(swa_lrs=1e-3, swa_epoch_start=2)],
            max_epochs=3)  # fmt: skip


@pytest.mark.timeout(60)
def test_stochastic_weight_averaging_with_channels_removed_during_training_is_refused_at_setup():
    module, pruning = Classifier(mlp()), pruning_callback("structured")
    with pytest.raises(ValueError, match=r"StochasticWeightAveraging.*Use shrink_when='end'"):
        fit(module, pruning, callbacks=[StochasticWeightAveraging(swa_lrs=1e-3)])


@pytest.mark.timeout(90)
def test_a_weights_only_checkpoint_of_a_shrunk_model_loads_into_a_fresh_module(tmp_path):
    L.seed_everything(0)
    module, pruning = ClassificationModule(mlp(), lr=1e-2), pruning_callback("structured")
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_weights_only=True, save_last=True)
    fit(module, pruning, callbacks=[checkpoint], enable_checkpointing=True)
    fresh = load_pruned(ClassificationModule(mlp()), tmp_path / "last.ckpt")
    assert [m.out_features for m in fresh.backbone if isinstance(m, nn.Linear)] == [
        m.out_features for m in module.backbone if isinstance(m, nn.Linear)
    ]
    x = teacher_data(8).tensors[0]
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), module.eval()(x))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["unstructured", "structured"])
def test_test_and_predict_after_fit_run_the_pruned_model(mode):
    L.seed_everything(0)
    module, pruning = ClassificationModule(mlp(), lr=1e-2), pruning_callback(mode)
    trainer, _ = fit(module, pruning)
    zeros_before = {n: int((p == 0).sum()) for n, p in module.named_parameters()}
    results = trainer.test(module, loader(32, seed=1), verbose=False)
    predictions = torch.cat(trainer.predict(module, loader(32, seed=1)))
    assert 0.0 <= results[0]["test_acc"] <= 1.0 and predictions.shape == (32,)
    # neither stage touched the pruned weights (the callback prunes in fit only)
    assert {n: int((p == 0).sum()) for n, p in module.named_parameters()} == zeros_before
    assert reached(pruning, module, ClassificationModule(mlp()))


class Compiled(Classifier):
    """A module that compiles its network, as the PyTorch 2 tutorials do."""

    def __init__(self, backend: str) -> None:
        super().__init__(torch.compile(mlp(), backend=backend))


def compiler_works(backend: str) -> str | None:
    try:
        torch.compile(nn.Linear(2, 2), backend=backend)(torch.randn(1, 2))
    except Exception as error:  # no C++ toolchain, an unsupported platform: nothing to test here
        return f"torch.compile(backend={backend!r}) does not work on this CPU: {type(error).__name__}: {error}"
    return None


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["unstructured", "structured"])
def test_a_module_that_compiles_its_network_is_pruned(mode):
    backend = "aot_eager"  # dynamo and autograd as with inductor, without minutes of C++ compilation on 2 cores
    if (reason := compiler_works(backend)) is not None:
        pytest.skip(reason)
    L.seed_everything(0)
    module, pruning = Compiled(backend), pruning_callback(mode)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, checker = fit(module, pruning)
    assert checker.checked > 0
    assert pruning.pruner.initial_weights == dense_prunable_count(Compiled(backend))
    assert pruning.sparsity == pytest.approx(TARGET, abs=0.05), [str(w.message) for w in caught]


class FineTuner(L.LightningModule):
    """A frozen backbone and a trainable head; the optimizer is given the head's parameters only."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())  # fmt: skip
        self.backbone.requires_grad_(False)
        self.head = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.head.parameters(), lr=1e-2)


def images(count: int = 32) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(count, 3, 12, 12, generator=generator)
    return DataLoader(list(zip(x, torch.randint(0, 4, (count,), generator=generator), strict=True)), batch_size=8)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["unstructured", "structured"])
def test_a_frozen_backbone_is_left_out_and_said_so_at_setup(mode):
    L.seed_everything(0)
    module, pruning = FineTuner(), pruning_callback(mode)
    with pytest.warns(UserWarning, match=r"leaves 2 frozen weight tensor\(s\) out.*`parameters=\[\.\.\.\]`"):
        fit(module, pruning, data=images())
    assert pruning.pruner.prunable == ["head.0.weight"]
    for conv in (module.backbone[0], module.backbone[2]):
        assert int((conv.weight == 0).sum()) == 0 and conv.out_channels == 8
    head = module.head[0].weight  # cut: zeros (unstructured) or fewer rows (structured)
    assert head.count_nonzero() < 32 * 8


@pytest.mark.timeout(60)
def test_frozen_weights_named_in_parameters_are_pruned():
    L.seed_everything(0)
    module = FineTuner()
    pruning = pruning_callback(parameters=["backbone.*.weight", "head.0.weight"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(module, pruning, data=images())
    assert not [w for w in caught if "frozen" in str(w.message)]
    assert pruning.pruner.prunable == ["backbone.0.weight", "backbone.2.weight", "head.0.weight"]
    assert all(int((conv.weight == 0).sum()) > 0 for conv in (module.backbone[0], module.backbone[2]))
    assert pruning.sparsity == pytest.approx(TARGET, abs=1e-3)


class ScoredClassifier(Classifier):
    """Logs ``val_acc``; with ``punish_cuts``, a validation accuracy of 0 once any prunable weight is zero (a guard
    then refuses every cut, deterministically)."""

    def __init__(self, backbone: nn.Module, punish_cuts: bool = False) -> None:
        super().__init__(backbone)
        self.punish_cuts = punish_cuts

    def validation_step(self, batch, batch_idx):
        x, y = batch
        accuracy = (self(x).argmax(dim=1) == y).float().mean()
        if self.punish_cuts:
            cut = any(bool((w == 0).any()) for n, w in self.named_parameters() if n.endswith("conv1.weight"))
            accuracy = torch.tensor(0.0 if cut else 1.0)
        self.log("val_acc", accuracy, on_epoch=True)


def timm_images(count: int = 16) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(count, 3, 32, 32, generator=generator)
    return DataLoader(list(zip(x, torch.randint(0, 4, (count,), generator=generator), strict=True)), batch_size=8)


def timm_resnet() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("test_resnet", pretrained=False, num_classes=4)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["unstructured", "structured"])
def test_pacing_by_damage_on_a_timm_model_reaches_the_target(mode):
    L.seed_everything(0)
    module, pruning = Classifier(timm_resnet()), pruning_callback(mode, pace_by="damage", damage_tolerance=0.05)
    _, checker = fit(module, pruning, data=timm_images())
    assert checker.checked > 0
    assert pruning.sparsity == pytest.approx(measured_sparsity(module, dense_prunable_count(timm_resnet())))
    assert pruning.sparsity == pytest.approx(TARGET, abs=0.05), pruning.history


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["unstructured", "structured"])
def test_guard_mode_on_a_timm_model_undoes_every_cut_its_metric_refuses(mode):
    L.seed_everything(0)
    module = ScoredClassifier(timm_resnet(), punish_cuts=True)
    pruning = RealTimePruningCallback(mode=mode, target_sparsity=None, guard="val_acc", max_drop=0.1,
                                      initial_ratio=0.2, end_epoch=3, shrink_when="end")  # fmt: skip
    _, checker = fit(module, pruning, data=timm_images(), val=timm_images(8), max_epochs=4, num_sanity_val_steps=0)
    assert checker.checked > 0  # a cut was made and kept at zero until the guard judged it
    assert any(h["action"] == "rollback" for h in pruning.history), pruning.history
    # every cut was refused: the final model has all its weights back
    assert pruning.sparsity == 0.0 == measured_sparsity(module, dense_prunable_count(timm_resnet()))


@pytest.mark.timeout(120)
def test_guard_mode_on_a_timm_model_keeps_cuts_its_metric_allows():
    L.seed_everything(0)
    module = ScoredClassifier(timm_resnet())
    pruning = RealTimePruningCallback(target_sparsity=None, guard="val_acc", max_drop=1.0, initial_ratio=0.2,
                                      end_epoch=3)  # fmt: skip
    _, checker = fit(module, pruning, data=timm_images(), val=timm_images(8), max_epochs=4, num_sanity_val_steps=0)
    assert checker.checked > 0 and pruning.sparsity > 0.1
    assert pruning.sparsity == pytest.approx(measured_sparsity(module, dense_prunable_count(timm_resnet())))


class ManualStep(Classifier):
    """Lightning's manual-optimisation example: steps its own optimizer, logs ``train_loss``, returns nothing."""

    def __init__(self, backbone: nn.Module, losses: tuple[str, ...] = ("train_loss",)) -> None:
        super().__init__(backbone)
        self.automatic_optimization = False
        self.losses = losses

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.manual_backward(loss)
        optimizer.step()
        for name in self.losses:
            self.log(name, loss)


class GAN(L.LightningModule):
    """Lightning's GAN recipe in small: two optimizers stepped in ``training_step``, which returns nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator, self.discriminator = mlp(), mlp()
        self.steps = 0

    def training_step(self, batch, batch_idx):
        self.steps += 1
        g_opt, d_opt = self.optimizers()
        x, _ = batch
        for name, net, opt in (("g_loss", self.generator, g_opt), ("d_loss", self.discriminator, d_opt)):
            opt.zero_grad()
            loss = net(x).pow(2).mean()
            self.manual_backward(loss)
            opt.step()
            self.log(name, loss)

    def configure_optimizers(self):
        return torch.optim.Adam(self.generator.parameters()), torch.optim.Adam(self.discriminator.parameters())


@pytest.mark.timeout(90)
def test_manual_optimisation_returning_nothing_is_paced_by_the_one_loss_it_logs(caplog):
    module, pruning = ManualStep(mlp()), pruning_callback("unstructured")
    with caplog.at_level("INFO"):
        fit(module, pruning)
    assert "pruning is paced by the one loss it logs, `train_loss`" in caplog.text
    assert pruning.sparsity == pytest.approx(TARGET, abs=1e-3)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in pruning.history)


@pytest.mark.timeout(60)
def test_a_module_that_returns_nothing_and_logs_several_losses_names_them():
    with pytest.raises(RuntimeError, match=r"it logs several losses \(`a_loss`, `b_loss`\).*`monitor=`"):
        fit(ManualStep(mlp(), losses=("a_loss", "b_loss")), pruning_callback("unstructured"))


@pytest.mark.timeout(60)
def test_two_optimizers_in_manual_optimisation_are_refused_before_the_first_step():
    module = GAN()
    with pytest.raises(ValueError, match=r"steps 2 optimizers itself .* pass `monitor=`"):
        fit(module, pruning_callback("unstructured"))
    assert module.steps == 0  # refused at fit start: no optimizer stepped
    pruning = pruning_callback("unstructured", monitor="g_loss")
    fit(GAN(), pruning)
    assert pruning.sparsity == pytest.approx(TARGET, abs=1e-3)


@pytest.mark.timeout(90)
def test_max_steps_without_max_epochs_reaches_the_target_on_time():
    # 4 batches an epoch, a decision every 2 steps in epochs [0, 2): the run's 12 steps take 3 epochs
    pruning = RealTimePruningCallback(target_sparsity=TARGET, interval_unit="step", interval=2, end_epoch=2)
    trainer = quiet_trainer(max_steps=12, max_epochs=-1, callbacks=[pruning])
    trainer.fit(Classifier(mlp()), loader(64))
    reached_at = next(h["step"] for h in pruning.history if h["sparsity"] >= TARGET - 1e-3)
    assert reached_at <= 8 and pruning.sparsity == pytest.approx(TARGET, abs=1e-3)
