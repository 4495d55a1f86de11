"""Under DDP every rank holds identical masks and history: decisions are synchronised and broadcast."""

from datetime import timedelta

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy

from lightning_prune import RealTimePruningCallback

from helpers import TinyNet, loader, quiet_trainer


class SaveRankState(Callback):
    """ddp_spawn trains in child processes: each rank writes what it holds for the parent to compare."""

    def __init__(self, pruning: RealTimePruningCallback, folder: str) -> None:
        self.pruning = pruning
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        state = {"masks": dict(self.pruning.masks.pruned.items()), "history": self.pruning.history,
                 "weights": {k: v.detach() for k, v in self.pruning.masks.weights.items()}}  # fmt: skip
        torch.save(state, f"{self.folder}/rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_both_ranks_hold_identical_masks(tmp_path):
    pruning = RealTimePruningCallback(monitor="objective", target_sparsity=0.6, initial_ratio=0.2)
    trainer = quiet_trainer(
        max_epochs=3, accelerator="cpu", devices=2, strategy="ddp_spawn",
        callbacks=[pruning, SaveRankState(pruning, str(tmp_path))],
    )  # fmt: skip
    trainer.fit(TinyNet(), loader(samples=128))
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0["history"] == rank1["history"]
    assert len(rank0["history"]) == 3 and rank0["history"][-1]["sparsity"] == pytest.approx(0.6, abs=1e-2)
    for name, mask in rank0["masks"].items():
        assert mask.any()
        assert torch.equal(mask, rank1["masks"][name]), name
        assert (rank1["weights"][name][mask] == 0).all()


class RankSkewedDensityNet(TinyNet):
    """Each rank logs its own guard value (no sync_dist), as a metric over a rank's shard of the validation data is:
    rank 1 sees every cut do half the damage rank 0 sees, so ranks deciding alone would part ways."""

    def validation_step(self, batch, batch_idx):
        weights = [self.net[0].weight, self.net[2].weight]
        density = sum(int(w.count_nonzero()) for w in weights) / sum(w.numel() for w in weights)
        self.log("val_density", 1 - (1 - density) / (1 + self.global_rank))


@pytest.mark.slow
def test_guard_and_damage_pacing_decide_the_same_on_every_rank(tmp_path):
    # rank 0's guard alone would refuse cuts past 30% sparsity, rank 1's past 60%: the mean over ranks decides
    pruning = RealTimePruningCallback(target_sparsity=None, guard="val_density", max_drop=0.3, pace_by="damage",
                                      damage_tolerance=0.05, initial_ratio=0.2, rollback=False, cooldown=0,
                                      monitor="objective")  # fmt: skip
    # ranks that part ways wait for each other's collectives: a short timeout makes that a failure, not a hang
    strategy = DDPStrategy(start_method="spawn", timeout=timedelta(seconds=60))
    trainer = quiet_trainer(
        max_epochs=8, accelerator="cpu", devices=2, strategy=strategy,
        callbacks=[pruning, SaveRankState(pruning, str(tmp_path))],
    )  # fmt: skip
    trainer.fit(RankSkewedDensityNet(), loader(samples=128), loader(samples=64))
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0["history"] == rank1["history"]
    assert any(h["action"] == "rollback" for h in rank0["history"])  # the guard refused a cut, on both ranks alike
    for name, mask in rank0["masks"].items():
        assert torch.equal(mask, rank1["masks"][name]), name


@pytest.mark.parametrize("strategy", ["FSDPStrategy", "DeepSpeedStrategy"])
def test_strategies_that_shard_parameters_are_refused_at_setup_saying_what_works(strategy):
    from types import SimpleNamespace

    from lightning.pytorch import strategies

    # neither runs on a CPU-only machine (FSDP needs CUDA, DeepSpeed is not installed): a Trainer stand-in carrying
    # an instance of the real strategy class is what setup() reads
    strategy_class = getattr(strategies, strategy)
    sharded = strategy_class.__new__(strategy_class)  # not initialised: its __init__ wants CUDA / DeepSpeed
    trainer = SimpleNamespace(strategy=sharded, world_size=2)
    pruning = RealTimePruningCallback()
    with pytest.raises(ValueError, match=rf"does not support {strategy}.*strategy='ddp'"):
        pruning.setup(trainer, TinyNet(), "fit")
    assert pruning.masks is None  # nothing was set up
