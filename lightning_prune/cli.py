"""The ``lightning-prune`` command: LightningCLI over any LightningModule / DataModule, W&B logging by default."""

import argparse
import importlib
import netrc
import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from lightning_prune.callback import RealTimePruningCallback
from lightning_prune.data.hub import DataSourceError
from lightning_prune.structured import compact_copy

WANDB_OFFLINE_MODES = ("offline", "dryrun", "disabled")


def wandb_api_key_configured() -> bool:
    """Whether W&B would find an API key: ``WANDB_API_KEY`` or an ``api.wandb.ai`` entry in the netrc file."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, PermissionError):
        return False


def wandb_server_reachable(timeout: float = 3.0) -> bool:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def choose_wandb_mode() -> str | None:
    """Decide online/offline *before* any W&B run starts, so W&B never prompts for a key or hangs on the network.

    Returns the reason for going offline, or None when W&B may log online (or the user already chose a mode).
    """
    if os.environ.get("WANDB_MODE", "").lower() in WANDB_OFFLINE_MODES:
        return None
    if not wandb_api_key_configured():
        reason = "no W&B API key is configured"
    elif not wandb_server_reachable():
        reason = "the W&B server cannot be reached"
    else:
        return None
    os.environ["WANDB_MODE"] = "offline"
    return reason


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
        extra = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        return self._instantiate_trainer(trainer_config, [callback for callback in extra if callback is not None])

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        link_vocab_size(config)
        tag_wandb_run(config)
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
        if not loggers or os.environ.get("WANDB_MODE", "").lower() not in WANDB_OFFLINE_MODES:
            return
        if not finished:
            why = f" because {self.wandb_offline_reason}" if self.wandb_offline_reason else ""
            rank_zero_info(f"W&B is logging offline{why}, under {Path(loggers[0].save_dir or '.') / 'wandb'}.")
            return
        run_dir = Path(loggers[0].experiment.dir).parent
        rank_zero_info(f"W&B offline run: {run_dir}. Upload it later with: wandb sync {run_dir}")


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
    history = saved.get("callbacks", {}).get(pruning[0].state_key, {}).get("history", [])
    best, final = (history[-1]["sparsity"] if history else 0.0), pruning[0].sparsity
    if best >= final - 1e-6:
        return None
    # a ModelCheckpoint without a monitor keeps the latest epoch (our task configs name its file last.ckpt)
    latest = next((cb.best_model_path for cb in trainer.checkpoint_callbacks if cb.monitor is None), "")
    where = latest or "kept by a ModelCheckpoint without `monitor` (see configs/mnist_cnn.yaml)"
    return f"Note: the best checkpoint is {best:.1%} sparse, the run ended {final:.1%} sparse; final model: {where}"


def tag_wandb_run(config) -> None:
    """Tag a W&B run ``pruned`` or ``unpruned`` (unless tags are set) so the dashboard can split the two."""
    logger = config.get("trainer", {}).get("logger")
    if not hasattr(logger, "get") or not str(logger.get("class_path", "")).endswith("WandbLogger"):
        return
    init_args = logger.get("init_args")
    if init_args is not None and init_args.get("tags") is None:
        init_args["tags"] = ["pruned" if config.get("pruning") else "unpruned"]


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


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's formatter, keeping the epilog's line breaks (the list of extra subcommands)."""


def export_main(argv: list[str]) -> None:
    """``lightning-prune export --ckpt_path PATH --output FILE``: the compact dense model of a checkpoint."""
    parser = argparse.ArgumentParser(
        prog="lightning-prune export",
        description="Write the compact dense model of a checkpoint: the backbone without the channels that pruning "
        "zeroed, whose outputs equal the pruned model's. Load it with `torch.load(FILE, weights_only=False)` "
        "(--format module) or `torch.jit.load(FILE)` (--format torchscript).",
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by `lightning-prune fit`")
    parser.add_argument("--output", required=True, help="file to write")
    parser.add_argument("--format", choices=("module", "torchscript"), default="module")
    options = parser.parse_args(argv)
    if not Path(options.ckpt_path).is_file():
        parser.error(f"--ckpt_path {options.ckpt_path!r} is not a file")
    compact, example, before = export_checkpoint(options.ckpt_path)
    if options.format == "torchscript":
        inputs = example if isinstance(example, tuple) else (example,)
        torch.jit.trace(compact.eval(), inputs).save(options.output)
    else:
        torch.save(compact, options.output)
    after = sum(p.numel() for p in compact.parameters())
    print(f"Wrote {options.output} ({options.format}): {after:,} parameters, {before:,} before compaction.")


def export_checkpoint(ckpt_path: str) -> tuple[torch.nn.Module, Any, int]:
    """Rebuild a checkpoint's module (its hyperparameters describe it), compact it, and return the backbone (or the
    module when it has none), the example input it was traced with, and the parameter count before compaction."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    module = LightningModule.load_from_checkpoint(ckpt_path, map_location="cpu")
    states = [v for k, v in checkpoint.get("callbacks", {}).items() if k.startswith("RealTimePruningCallback")]
    example = next((s["example_input"] for s in states if s.get("example_input") is not None), None)
    if example is None:
        example = getattr(module, "example_input_array", None)
    before = sum(p.numel() for p in module.parameters())
    compact = compact_copy(module, example)
    return getattr(compact, "backbone", compact), example, before


EXTRA_SUBCOMMANDS = {
    "compare": ("lightning_prune.compare.cli", "run pruned and unpruned arms over seeds, with statistics and a report"),
    "export": ("lightning_prune.cli", "write the compact dense model of a checkpoint"),
}


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-prune`` console script: LightningCLI subcommands, ``compare``, ``export``."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in EXTRA_SUBCOMMANDS:
        module = importlib.import_module(EXTRA_SUBCOMMANDS[argv[0]][0])
        getattr(module, f"{argv[0]}_main")(argv[1:])
        return
    epilog = "extra subcommands:\n" + "\n".join(
        f"  {name:<10} {help_text} (lightning-prune {name} --help)"
        for name, (_, help_text) in EXTRA_SUBCOMMANDS.items()
    )
    try:
        LightningPruneCLI(args=args, parser_kwargs={"epilog": epilog, "formatter_class": _HelpFormatter})
    except DataSourceError as err:
        print(f"lightning-prune: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
