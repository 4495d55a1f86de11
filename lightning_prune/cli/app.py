"""LightningPruneCLI: LightningCLI over any LightningModule / DataModule, with the package's defaults.

W&B falls back to offline by itself (``wandb_mode.py``), the pruning callback has a config group of its own
(``--pruning.*``), the IMDB vocabulary follows the data, each run keeps its config beside its checkpoints, and the
run's location is printed at the end.
"""

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from lightning_prune.callback import RealTimePruningCallback, checkpoint_state
from lightning_prune.cli.progress import use_plain_progress_when_piped
from lightning_prune.cli.wandb_mode import choose_wandb_mode, tag_wandb_run, wandb_offline


def run_directory(trainer: Trainer) -> Path:
    """Where this run's checkpoints and config live: ``<save_dir>/<name>/<version>`` as ModelCheckpoint resolves it."""
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.dirpath:
        return Path(checkpoint.dirpath).parent
    return Path(trainer.log_dir or trainer.default_root_dir)


class RunConfigCallback(SaveConfigCallback):
    """Saves the full config into the run's own directory (beside its checkpoints) and logs it to the logger.

    LightningCLI's default saves into the logger's shared save_dir, where the next run of the same config would
    refuse to overwrite it.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """The run directory is only known once ModelCheckpoint (ordered last) has resolved it: see on_fit_start."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.already_saved or not trainer.is_global_zero:
            return
        path = run_directory(trainer) / self.config_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=self.multifile)
        if trainer.logger is not None:
            trainer.logger.log_hyperparams(self.config.clone().as_dict())
        self.already_saved = True


class LightningPruneCLI(LightningCLI):
    """LightningCLI with the package's defaults: any LightningModule / DataModule by class path, W&B that falls back
    to offline by itself, the IMDB vocabulary passed from the data to the model, and the run's location printed."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("model_class", LightningModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", RunConfigCallback)
        kwargs.setdefault("auto_configure_optimizers", True)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        # a group of its own (not trainer.callbacks) so that `--config prune.yaml` adds to a task config's callbacks
        # instead of replacing the list
        parser.add_lightning_class_args(RealTimePruningCallback, "pruning", subclass_mode=True, required=False)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        # LightningCLI's own instantiate_trainer takes the callbacks from `trainer.callbacks` and from the groups
        # added with add_lightning_class_args; it is overridden (with its private helpers, as of Lightning 2.6) only
        # so that an absent `--pruning` group (None) is skipped instead of passed on as a callback
        extra = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        return self._instantiate_trainer(trainer_config, [callback for callback in extra if callback is not None])

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        link_vocab_size(config)
        tag_wandb_run(config)
        use_plain_progress_when_piped(config)
        self.wandb_offline_reason = choose_wandb_mode()

    def before_fit(self) -> None:
        self._announce_wandb()

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        rank_zero_info(f"Run directory: {run_directory(self.trainer)}")
        checkpoint = self.trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.best_model_path:
            score = checkpoint.best_model_score
            shown = f" ({checkpoint.monitor}={score:.4f})" if score is not None else ""
            rank_zero_info(f"Best checkpoint: {checkpoint.best_model_path}{shown}")
            note = best_checkpoint_sparsity_note(self.trainer)
            if note:
                rank_zero_info(note)
        self._announce_wandb(finished=True)

    def _announce_wandb(self, finished: bool = False) -> None:
        loggers = [lg for lg in self.trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not wandb_offline():
            return
        if not finished:
            why = f" because {self.wandb_offline_reason}" if self.wandb_offline_reason else ""
            rank_zero_info(f"W&B is logging offline{why}, under {Path(loggers[0].save_dir or '.') / 'wandb'}.")
            return
        run_dir = Path(loggers[0].experiment.dir).parent
        rank_zero_info(f"W&B offline run: {run_dir}. Upload it later with: wandb sync {run_dir}")


@contextlib.contextmanager
def arguments_alone() -> Iterator[None]:
    """While LightningCLI is built from an explicit argument list: ``sys.argv`` holds the caller's own options (the
    test runner's, or ``compare``'s), and LightningCLI warns, with the whole list, when it is given both."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = argv


def best_checkpoint_sparsity_note(trainer: Trainer) -> str | None:
    """A line for the end of fit when the best checkpoint holds a less pruned model than the run ended with.

    ModelCheckpoint ranks checkpoints by its monitored metric alone, and an early, barely pruned model often scores
    best; whoever tests or exports "the best checkpoint" of a pruned run must know that it is not the pruned model.
    """
    checkpoint = trainer.checkpoint_callback
    pruning = [cb for cb in trainer.callbacks if isinstance(cb, RealTimePruningCallback)]
    if checkpoint is None or not checkpoint.best_model_path or len(pruning) != 1:
        return None
    saved = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
    state = saved.get("callbacks", {}).get(pruning[0].state_key)
    history = checkpoint_state(state)["decision"].get("history", []) if state else []
    best, final = (history[-1]["sparsity"] if history else 0.0), pruning[0].sparsity
    if best >= final - 1e-6:
        return None
    # a ModelCheckpoint without a monitor keeps the latest epoch (our task configs name its file last.ckpt)
    latest = next((cb.best_model_path for cb in trainer.checkpoint_callbacks if cb.monitor is None), "")
    where = latest or "kept by a ModelCheckpoint without `monitor` (see configs/mnist_cnn.yaml)"
    return f"Note: the best checkpoint is {best:.1%} sparse, the run ended {final:.1%} sparse; final model: {where}"


def link_vocab_size(config) -> None:
    """Give a text backbone the DataModule's ``vocab_size`` so the two cannot disagree."""
    data_args = config.get("data", {}).get("init_args") if config.get("data") else None
    model = config.get("model")
    backbone = model.get("init_args", {}).get("backbone") if model is not None else None
    if data_args is None or backbone is None or not hasattr(backbone, "get"):
        return
    backbone_args = backbone.get("init_args")
    if data_args.get("vocab_size") is not None and backbone_args is not None and "vocab_size" in backbone_args:
        backbone_args["vocab_size"] = data_args["vocab_size"]
