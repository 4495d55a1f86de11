"""The ``lightning-prune`` CLI: every task config runs, subcommands work, configs round-trip, W&B never prompts."""

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import wandb
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_prune import RealTimePruningCallback
from lightning_prune.cli import LightningPruneCLI, best_checkpoint_sparsity_note, main
from lightning_prune.models import CIFARResNet18
from lightning_prune.profiling import count_macs

from helpers import TinyNet, loader, quiet_trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TASKS = {"mnist_cnn": "tiny_mnist", "cifar10_resnet18": "tiny_cifar10", "imdb_lstm": "tiny_imdb"}


def task_args(task: str, data_dir: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(CONFIGS / f"{task}.yaml"),
        "--data.data_dir",
        str(data_dir),
        "--data.val_size",
        "16",
        *extra,
    ]


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    # the configs write runs/ relative to the working directory
    monkeypatch.chdir(tmp_path)
    yield
    wandb.finish()
    # W&B's service process resolves relative paths against its own working directory: start a fresh one
    wandb.teardown()


@pytest.mark.parametrize("task", list(TASKS))
def test_each_task_config_fits(task, request):
    data_dir = request.getfixturevalue(TASKS[task])
    cli = LightningPruneCLI(args=["fit", *task_args(task, data_dir, "--trainer.fast_dev_run", "true")])
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 1


def test_imdb_model_vocabulary_follows_the_data(tiny_imdb):
    args = task_args("imdb_lstm", tiny_imdb, "--data.vocab_size", "64", "--trainer.fast_dev_run", "true")
    cli = LightningPruneCLI(args=["fit", *args])
    assert cli.model.backbone.embedding.num_embeddings == 64


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_other_subcommands_run(subcommand, tiny_mnist):
    cli = LightningPruneCLI(args=[subcommand, *task_args("mnist_cnn", tiny_mnist, "--trainer.fast_dev_run", "true")])
    assert cli.trainer.state.finished


def test_print_config_round_trips(tiny_mnist, tmp_path, capsys):
    args = task_args("mnist_cnn", tiny_mnist, "--trainer.max_epochs", "3")
    with pytest.raises(SystemExit):
        main(["fit", *args, "--print_config"])
    printed = capsys.readouterr().out
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(printed)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(dumped), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(printed)
    assert yaml.safe_load(printed)["trainer"]["max_epochs"] == 3
    cli = LightningPruneCLI(args=["fit", "--config", str(dumped), "--trainer.fast_dev_run", "true"])
    assert cli.trainer.state.finished


def test_plan_hyperparameters_are_in_the_configs():
    for task in TASKS:
        config = yaml.safe_load((CONFIGS / f"{task}.yaml").read_text())
        assert config["trainer"]["max_epochs"] == 50
        assert config["model"]["init_args"]["lr"] == 0.001
        assert config["data"]["init_args"]["batch_size"] == 64
        classes = [c["class_path"].rsplit(".", 1)[-1] for c in config["trainer"]["callbacks"]]
        checkpoints = [c["init_args"] for c in config["trainer"]["callbacks"] if c["class_path"].endswith("Checkpoint")]
        assert [c.get("monitor") for c in checkpoints] == ["val_acc", None]  # the best, and the latest epoch
        assert "RichProgressBar" in classes


def test_wandb_falls_back_to_offline_without_a_key_and_says_where(tiny_mnist, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    extra = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    with caplog.at_level(logging.INFO):
        main(["fit", *task_args("mnist_cnn", tiny_mnist, *extra)])
    messages = caplog.text
    assert "W&B is logging offline because no W&B API key is configured" in messages
    assert "wandb sync" in messages
    offline_runs = list((tmp_path / "runs/mnist_cnn/wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    run_dirs = list((tmp_path / "runs/mnist_cnn/lightning-prune").iterdir())
    assert len(run_dirs) == 1
    assert (run_dirs[0] / "config.yaml").is_file()
    assert list((run_dirs[0] / "checkpoints").glob("*.ckpt"))
    assert f"Run directory: {Path('runs/mnist_cnn/lightning-prune') / run_dirs[0].name}" in messages


def test_bad_data_dir_is_a_one_line_error_not_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / "mnist_cnn.yaml"),
                "--data.data_dir",
                str(tmp_path / "missing"),
                "--trainer.fast_dev_run",
                "true",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_console_script_is_installed():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lightning-prune"), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    for subcommand in ("fit", "validate", "test", "predict"):
        assert subcommand in result.stdout


def test_pruned_run_logs_pruning_curves_to_wandb_and_its_saved_config_reloads(tiny_mnist, tmp_path):
    extra = ["--config", str(CONFIGS / "prune.yaml"), "--pruning.target_sparsity", "0.5", "--trainer.max_epochs", "2",
             "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1"]  # fmt: skip
    cli = LightningPruneCLI(args=["fit", *task_args("mnist_cnn", tiny_mnist, *extra)])
    pruning = next(cb for cb in cli.trainer.callbacks if cb.__class__.__name__ == "RealTimePruningCallback")
    assert len(pruning.history) == 2 and pruning.sparsity > 0
    # prune.yaml adds the callback without replacing the task's own callbacks
    names = {type(cb).__name__ for cb in cli.trainer.callbacks}
    assert {"ModelCheckpoint", "RealTimePruningCallback"} <= names
    assert names & {"RichProgressBar", "PlainProgressBar"}  # Rich in a terminal, plain lines in a log
    assert cli.trainer.logger.experiment.tags == ("pruned",)
    wandb.finish()
    # the offline run file holds each logged key once per logged row (protobuf keeps the names as plain text)
    keys = ("pruning/sparsity", "pruning/ratio", "pruning/params_nonzero", "pruning/action", "grad_norm/total")
    path = next((tmp_path / "runs/mnist_cnn/wandb").glob("offline-run-*/run-*.wandb"))
    # W&B's service process writes the file on its own schedule: on a busy machine the last rows land after finish()
    deadline = time.monotonic() + 60
    while not all(path.read_bytes().count(key.encode()) >= 2 for key in keys) and time.monotonic() < deadline:
        time.sleep(0.5)
    for key in keys:
        assert path.read_bytes().count(key.encode()) >= 2, key
    saved = next((tmp_path / "runs/mnist_cnn/lightning-prune").glob("*/config.yaml"))
    assert yaml.safe_load(saved.read_text())["pruning"]["init_args"]["target_sparsity"] == 0.5
    again = LightningPruneCLI(args=["fit", "--config", str(saved), "--trainer.fast_dev_run", "true"])
    reloaded = next(cb for cb in again.trainer.callbacks if cb.__class__.__name__ == "RealTimePruningCallback")
    assert reloaded.target_sparsity == 0.5


def test_the_default_recipe_and_the_plans_differ_only_in_the_saliency_and_pace(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def pruning_of(recipe: str) -> RealTimePruningCallback:
        extra = ["--config", str(CONFIGS / recipe), "--trainer.fast_dev_run", "true", "--trainer.logger", "false"]
        cli = LightningPruneCLI(args=task_args("mnist_cnn", tiny_mnist, *extra), run=False)
        return next(cb for cb in cli.trainer.callbacks if cb.__class__.__name__ == "RealTimePruningCallback")

    default, plan = pruning_of("prune.yaml"), pruning_of("prune_plan.yaml")
    assert (default.importance, default.normalize_per_layer, default.controller.max_ratio) == ("magnitude", False, 0.75)
    assert (default.controller.pace_by, default.controller.damage_tolerance) == ("damage", 0.01)
    assert plan.controller.pace_by == "loss"
    assert (plan.importance, plan.normalize_per_layer, plan.controller.max_ratio) == ("taylor", True, 0.5)
    # the plan's schedule in both: every epoch, first ratio 0.01, to 90%
    for pruning in (default, plan):
        assert (pruning.target_sparsity, pruning.controller.initial_ratio, pruning.interval) == (0.9, 0.01, 1)


def test_the_flops_recipe_prunes_resnet18_channels_to_its_mac_target(tiny_cifar10, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = ["--config", str(CONFIGS / "prune.yaml"), "--config", str(CONFIGS / "prune_flops.yaml"),
              "--pruning.initial_ratio", "0.5", "--pruning.max_ratio", "0.75", "--trainer.max_epochs", "2",
              "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
              "--trainer.logger", "false"]  # fmt: skip
    cli = LightningPruneCLI(args=["fit", *task_args("cifar10_resnet18", tiny_cifar10, *recipe)])
    pruning = next(cb for cb in cli.trainer.callbacks if cb.__class__.__name__ == "RealTimePruningCallback")
    assert (pruning.mode, pruning.budget) == ("structured", "flops")
    reached = pruning.pruner.sparsity_at(pruning.pruner.remaining())
    assert reached == pytest.approx(0.7, abs=pruning.pruner.resolution() + 1e-3)
    # the channels are gone from the model itself: its convolutions' MACs fell by the target share or more
    macs = count_macs(cli.model.backbone, (torch.randn(1, 3, 32, 32),))
    dense = count_macs(CIFARResNet18(), (torch.randn(1, 3, 32, 32),))
    convs = [n for n, m in CIFARResNet18().named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert 1 - sum(macs.per_layer[n] for n in convs) / sum(dense.per_layer[n] for n in convs) >= 0.7 - 0.01


def test_a_best_checkpoint_less_pruned_than_the_final_model_is_pointed_out(tmp_path):
    # the lowest loss comes first, before pruning has gone far: the "best" checkpoint is the least pruned one
    pruning = RealTimePruningCallback(monitor="objective", target_sparsity=0.6, initial_ratio=0.3, end_epoch=3)
    best = ModelCheckpoint(dirpath=tmp_path, monitor="watch", mode="min")
    latest = ModelCheckpoint(dirpath=tmp_path, filename="last")
    trainer = quiet_trainer(max_epochs=4, callbacks=[pruning, best, latest], enable_checkpointing=True)
    trainer.fit(TinyNet(scripted={0: 0.1, 1: 0.5, 2: 0.6, 3: 0.7}), loader())
    assert best.best_model_path.endswith("epoch=0-step=16.ckpt") and latest.best_model_path.endswith("last.ckpt")
    note = best_checkpoint_sparsity_note(trainer)
    first_cut = pruning.history[0]["sparsity"]
    assert note is not None and f"{first_cut:.1%} sparse" in note and f"{pruning.sparsity:.1%} sparse" in note
    assert latest.best_model_path in note

    # when the best checkpoint is the final model, nothing is said
    best.best_model_path = latest.best_model_path
    assert best_checkpoint_sparsity_note(trainer) is None


def test_last_ckpt_holds_the_latest_epoch_even_when_val_acc_stopped_improving(tiny_mnist, tmp_path):
    # lr 0: val_acc never improves after epoch 0, so only epoch 0 is "best"; last.ckpt must still follow every epoch
    extra = ["--trainer.max_epochs", "3", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
             "--optimizer", "SGD", "--optimizer.lr", "0", "--trainer.logger", "false"]  # fmt: skip
    cli = LightningPruneCLI(args=["fit", *task_args("mnist_cnn", tiny_mnist, *extra)])
    assert "epoch=0-" in cli.trainer.checkpoint_callback.best_model_path
    last = next(Path("runs/mnist_cnn").rglob("last.ckpt"))
    assert torch.load(last, weights_only=False)["global_step"] == cli.trainer.global_step == 6


def test_without_a_terminal_the_fit_prints_plain_progress_lines_during_the_epoch(tiny_mnist, tmp_path):
    log = tmp_path / "fit.log"
    with log.open("w") as stdout:  # stdout is a file, as under nohup or a batch scheduler
        result = subprocess.run(
            [str(Path(sys.executable).parent / "lightning-prune"), "fit", "--config", str(CONFIGS / "mnist_cnn.yaml"),
             "--data.data_dir", str(tiny_mnist), "--data.batch_size", "8", "--trainer.max_epochs", "1"],
            stdout=stdout, stderr=subprocess.PIPE, text=True, check=False, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = log.read_text().splitlines()
    during = [line for line in lines if line.startswith("Epoch 0 step ") and "(100%)" not in line]
    assert during, lines
    assert "train_loss" in during[0] and "it/s" in during[0] and "left" in during[0]
    assert any(line.startswith("Epoch 0 validation,") and "val_acc" in line for line in lines)
    assert any(line.startswith("Epoch 0 done in") for line in lines)


def test_plain_progress_prints_every_few_percent_not_every_step():
    from types import SimpleNamespace

    from lightning_prune.cli.progress import PlainProgressBar

    class HundredBatches(PlainProgressBar):
        total_train_batches = 100

        def get_metrics(self, trainer, pl_module):
            return {}

    bar, lines = HundredBatches(every_percent=10, every_seconds=3600), []
    bar._say = lines.append
    trainer = SimpleNamespace(current_epoch=0)
    bar.on_train_epoch_start(trainer, None)
    for batch_idx in range(100):
        bar.on_train_batch_end(trainer, None, None, None, batch_idx)
    assert [line.split()[3] for line in lines] == [f"{k}/100" for k in range(10, 101, 10)]


def test_guard_mode_from_the_command_line(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    guard = ["--config", str(CONFIGS / "prune.yaml"), "--pruning.target_sparsity", "null", "--pruning.guard",
             "val_acc", "--pruning.max_drop", "0.005", "--trainer.logger", "false"]  # fmt: skip
    cli = LightningPruneCLI(args=task_args("mnist_cnn", tiny_mnist, *guard), run=False)
    pruning = next(cb for cb in cli.trainer.callbacks if cb.__class__.__name__ == "RealTimePruningCallback")
    assert (pruning.target_sparsity, pruning.guard.metric, pruning.guard.mode, pruning.guard.max_drop) == (
        None, "val_acc", "max", 0.005)  # fmt: skip


def test_turning_the_progress_bar_off_drops_the_task_configs_bar(tiny_mnist, tmp_path, monkeypatch):
    # the task configs list a RichProgressBar, which Lightning refuses beside enable_progress_bar=False
    monkeypatch.chdir(tmp_path)
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.fast_dev_run", "true", "--trainer.logger", "false"]
    cli = LightningPruneCLI(args=task_args("mnist_cnn", tiny_mnist, *quiet), run=False)
    assert cli.trainer.progress_bar_callback is None
    assert not any("ProgressBar" in type(cb).__name__ for cb in cli.trainer.callbacks)
