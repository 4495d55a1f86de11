"""Structured mode's FLOPs budget: the ratio, the cuts and the target count MACs, channels go by saliency alone."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import ClassificationModule, RealTimePruningCallback
from lightning_prune.profiling import count_macs
from lightning_prune.structured import ChannelGroup, Member, select_channels

from helpers import quiet_trainer


def convnet() -> nn.Sequential:
    # the first convolution runs on 16x16 maps, the last on 4x4: per weight, the first costs 16 times the MACs
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 4),
    )  # fmt: skip


def images(samples: int = 128, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 3, 16, 16, generator=generator)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0].mean(dim=(1, 2)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=32)


def conv_macs(model: nn.Module) -> int:
    """MACs per sample of the three convolutions (what the budget counts), on the model as it is now."""
    count = count_macs(model, (torch.randn(1, 3, 16, 16),))
    return sum(macs for name, macs in count.per_layer.items() if name in {"0", "2", "4"})


def fit(budget: str, target: float, epochs: int = 4, **settings) -> tuple[RealTimePruningCallback, nn.Module]:
    L.seed_everything(0)
    pruning = RealTimePruningCallback(mode="structured", budget=budget, target_sparsity=target, initial_ratio=0.3,
                                      end_epoch=epochs - 1, **settings)  # fmt: skip
    module = ClassificationModule(convnet())
    quiet_trainer(max_epochs=epochs, callbacks=[pruning]).fit(module, images())
    return pruning, module.backbone


def test_flops_budget_removes_the_target_share_of_the_macs_and_reports_weight_sparsity():
    dense_macs = conv_macs(convnet())
    pruning, model = fit("flops", 0.6)
    removed = 1 - conv_macs(model) / dense_macs
    # whole channels: the last cut lands within about one channel's worth of the target
    assert 0.6 - 0.02 <= removed <= 0.6 + 0.08, removed
    # `sparsity` (and the logged pruning/sparsity) stays the weights' share, as everywhere else
    dense_weights = sum(m.weight.numel() for m in convnet()[:5] if isinstance(m, nn.Conv2d))
    kept_weights = sum(m.weight.numel() for m in model[:5] if isinstance(m, nn.Conv2d))
    assert pruning.sparsity == pytest.approx(1 - kept_weights / dense_weights)
    assert pruning.history[-1]["sparsity"] == pytest.approx(pruning.sparsity)
    assert pruning.sparsity != pytest.approx(removed, abs=0.01)


def test_at_one_target_a_flops_budget_removes_more_macs_than_a_weight_budget():
    dense_macs = conv_macs(convnet())
    by_weights, weights_model = fit("weights", 0.5)
    _, flops_model = fit("flops", 0.5)
    # per weight saved, the 4x4 layer's channels are cheapest in MACs: half the weights are less than half the MACs
    assert by_weights.sparsity >= 0.5 - 0.02
    assert 1 - conv_macs(weights_model) / dense_macs < 0.45
    assert 1 - conv_macs(flops_model) / dense_macs >= 0.5 - 0.02


def test_flops_budget_resumes_with_the_initial_macs_of_the_unpruned_model(tmp_path):
    settings = {"budget": "flops", "target_sparsity": 0.6, "initial_ratio": 0.3, "end_epoch": 4}
    L.seed_everything(0)
    first = RealTimePruningCallback(mode="structured", **settings)
    module = ClassificationModule(convnet())
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    quiet_trainer(max_epochs=3, callbacks=[first, checkpoint], enable_checkpointing=True).fit(module, images())
    assert module.backbone[0].out_channels < 16 or module.backbone[2].out_channels < 32  # shrunk before the save

    second = RealTimePruningCallback(mode="structured", **settings)
    fresh = ClassificationModule(convnet())
    quiet_trainer(max_epochs=5, callbacks=[second]).fit(fresh, images(), ckpt_path=tmp_path / "last.ckpt")
    assert second.pruner.initial_macs == first.pruner.initial_macs
    assert second.history[:3] == first.history[:3]
    assert 1 - conv_macs(fresh.backbone) / conv_macs(convnet()) >= 0.6 - 0.02


def test_resuming_with_another_budget_is_refused_naming_it(tmp_path):
    # the checkpoint's history and ratio count weights; MACs before pruning are gone from a shrunk model
    settings = {"target_sparsity": 0.6, "initial_ratio": 0.3, "end_epoch": 4}
    L.seed_everything(0)
    first = RealTimePruningCallback(mode="structured", budget="weights", **settings)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    module = ClassificationModule(convnet())
    quiet_trainer(max_epochs=2, callbacks=[first, checkpoint], enable_checkpointing=True).fit(module, images())
    assert first.sparsity > 0

    second = RealTimePruningCallback(mode="structured", budget="flops", **settings)
    with pytest.raises(ValueError, match=r"budget='weights'.*`budget`='flops'"):
        quiet_trainer(max_epochs=5, callbacks=[second]).fit(
            ClassificationModule(convnet()), images(), ckpt_path=tmp_path / "last.ckpt"
        )


def test_bad_budgets_name_themselves():
    with pytest.raises(ValueError, match="`budget`"):
        RealTimePruningCallback(mode="structured", budget="macs")
    with pytest.raises(ValueError, match="`budget`='flops' needs mode='structured'"):
        RealTimePruningCallback(budget="flops")


def test_ranking_by_saliency_alone_lets_every_group_lose_its_least_salient_channels():
    groups = [ChannelGroup(n, 4, [Member(f"{n}.weight", 0, torch.arange(4), produces=True)]) for n in "ab"]
    scores = [torch.tensor([1.0, 2.0, 3.0, 4.0])] * 2
    costs = [torch.full((4,), 100.0), torch.full((4,), 1.0)]  # a's channels save 100 times more
    gone = [torch.zeros(4, dtype=torch.bool)] * 2
    per_cost = select_channels(groups, scores, costs, gone, budget=200, min_layer_density=0.0)
    alone = select_channels(groups, scores, costs, gone, budget=101, min_layer_density=0.0, per_cost=False)
    assert {n: c.tolist() for n, c in per_cost.items()} == {"a": [0, 1]}
    assert {n: c.tolist() for n, c in alone.items()} == {"a": [0], "b": [0]}
