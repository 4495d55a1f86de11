"""Planning a comparison: each arm's config as LightningCLI resolves it, the baselines' schedules, the margin, the
checks of ``compare``'s options against the configs (errors through the parser: exit 2)."""

import argparse
from collections.abc import Sequence
from pathlib import Path

from jsonargparse import Namespace

from lightning_prune.cli.app import LightningPruneCLI, arguments_alone
from lightning_prune.cli.wandb_mode import DEFAULT_PROJECT
from lightning_prune.compare.baselines import baseline_schedule
from lightning_prune.compare.provenance import without_per_run_keys
from lightning_prune.compare.runner import Arm, Comparison, is_wandb, logger_configs
from lightning_prune.compare.stats import DEFAULT_MARGINS, OTHER_MARGIN
from lightning_prune.compare.status import PRUNED, UNPRUNED
from lightning_prune.schedule import PruningWindow

RESERVED = ("--seed_everything", "--trainer.default_root_dir")


class _ConfigOnly(LightningPruneCLI):
    """Parses (and validates) an arm's arguments without instantiating anything."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def parse_arm(args: Sequence[str]) -> Namespace:
    """An arm's full config as LightningCLI resolves it. Exits with code 2 and jsonargparse's message when invalid."""
    with arguments_alone():  # sys.argv holds compare's own options: LightningCLI would warn of them once per arm
        return _ConfigOnly(args=list(args), run=False).config


def without_pruning_options(overrides: Sequence[str]) -> list[str]:
    """The overrides minus ``--pruning.*`` (and their values): they configure the pruned arm's callback only.

    Example:
        >>> without_pruning_options(["--pruning.target_sparsity", "0.5", "--trainer.max_epochs=3", "--pruning.mode=x"])
        ['--trainer.max_epochs=3']
    """
    kept, skip_value = [], False
    for token in overrides:
        if skip_value:
            skip_value = False
            if not token.startswith("--"):
                continue
        if token == "--pruning" or token.startswith(("--pruning.", "--pruning=")):
            skip_value = "=" not in token
            continue
        kept.append(token)
    return kept


def _wandb_project(config: Namespace) -> str | None:
    """The project of the first WandbLogger in the config, or None when the runs do not log to W&B."""
    for logger in logger_configs(config.get("trainer.logger")):
        if is_wandb(logger):
            init_args = logger.get("init_args") or Namespace()
            return init_args.get("project") or DEFAULT_PROJECT
    return None


def plan_comparison(parser: argparse.ArgumentParser, options: argparse.Namespace, overrides: list[str]) -> Comparison:
    """Check the options and the arms' configs, and plan the runs. Errors go through ``parser.error`` (exit 2)."""
    if options.seeds < 1:
        parser.error(f"argument --seeds: must be at least 1, got {options.seeds}")
    if options.first_seed < 0:
        parser.error(f"argument --first-seed: must be 0 or more, got {options.first_seed}")
    if options.profile_threads < 1:
        parser.error(f"argument --profile-threads: must be at least 1, got {options.profile_threads}")
    for flag, value in (("--jobs", options.jobs), ("--jobs-per-device", options.jobs_per_device)):
        if value < 1:
            parser.error(f"argument {flag}: must be at least 1, got {value}")
    if not options.claim_timeout > 0:
        parser.error(f"argument --claim-timeout: must be more than 0 seconds, got {options.claim_timeout:g}")
    if options.report_only and (options.jobs > 1 or options.shard is not None):
        parser.error("argument --report-only: writes the report from the runs on disk; drop --jobs and --shard")
    if options.margin is not None and not 0 < options.margin < 100:
        parser.error(f"argument --margin: must be between 0 and 100 points, got {options.margin}")
    for flag, paths in (("--config", options.config), ("--prune-config", [options.prune_config])):
        for path in paths:
            if not Path(path).is_file():
                parser.error(f"argument {flag}: file not found: {path}")
    for token in overrides:
        if token.split("=", 1)[0] in RESERVED:
            parser.error(f"argument {token.split('=', 1)[0]}: set by `compare` for each run (see --seeds); drop it")
    configs = [arg for path in options.config for arg in ("--config", str(Path(path).resolve()))]
    plain = (*configs, *without_pruning_options(overrides))
    pruned = (*configs, "--config", str(Path(options.prune_config).resolve()), *overrides)

    plain_config, pruned_config = parse_arm(plain), parse_arm(pruned)
    if plain_config.get("pruning") is not None:
        parser.error("argument --config: the task config already adds `pruning:`; put the recipe in --prune-config")
    pruning = pruned_config.get("pruning")
    if pruning is None:
        parser.error(f"argument --prune-config: {options.prune_config} configures no `pruning:` callback")
    pruning_args = pruning.get("init_args") or Namespace()

    plain_resolved = without_per_run_keys(plain_config.as_dict())
    arms = [Arm(UNPRUNED, plain, config=plain_resolved),
            Arm(PRUNED, pruned, config=without_per_run_keys(pruned_config.as_dict()))]  # fmt: skip
    names = [name for name, _ in options.arm]
    if len(set(names)) < len(names):
        parser.error(f"argument --arm: each arm needs its own name, got {', '.join(names)}")
    for name, options_of_arm in options.arm:
        arm_args = (*pruned, *options_of_arm)
        arm_config = parse_arm(arm_args)
        if arm_config.get("pruning") is None:
            parser.error(f"argument --arm: {name} configures no `pruning:` callback")
        arms.append(Arm(name, arm_args, config=without_per_run_keys(arm_config.as_dict())))
    for baseline, target in dict.fromkeys(options.baseline):
        amounts = _baseline_amounts(parser, baseline, pruning_args, pruned_config, target)
        name = baseline if target is None else f"{baseline}_{target:g}"
        arms.append(Arm(name, plain, amounts, config=plain_resolved))
    if len({arm.name for arm in arms}) < len(arms):
        parser.error(f"argument --arm: an arm has the name of a baseline arm: {', '.join(arm.name for arm in arms)}")
    output = Path(options.output or f"runs/compare-{Path(options.config[0]).stem}").resolve()
    project = _wandb_project(plain_config)
    settings = {
        "configs": configs,
        "prune_config": str(Path(options.prune_config).resolve()),
        "overrides": overrides,
        "no_wandb": bool(options.no_wandb),
        "profile_threads": options.profile_threads,
    }
    if options.arm:
        settings["arms"] = {name: list(args) for name, args in options.arm}
    margin, margin_source = default_margin(plain_config)
    if options.margin is not None:
        margin, margin_source = options.margin, "--margin"
    return Comparison(
        output=output,
        seeds=list(range(options.first_seed, options.first_seed + options.seeds)),
        arms=arms,
        wandb=not options.no_wandb and project is not None,
        project=project or DEFAULT_PROJECT,
        profile_threads=options.profile_threads,
        parameters=pruning_args.get("parameters"),
        exclude=pruning_args.get("exclude"),
        settings=settings,
        margin=margin,
        margin_source=margin_source,
        reuse_stale=bool(options.reuse_stale),
    )


def default_margin(config: Namespace) -> tuple[float, str]:
    """The margin in points for the config's data (``DEFAULT_MARGINS`` by DataModule class name, ``OTHER_MARGIN`` for
    other data) and where it came from, in words."""
    class_path = str(config.get("data.class_path") or "")
    name = class_path.rpartition(".")[2]
    if name in DEFAULT_MARGINS:
        return DEFAULT_MARGINS[name], f"default for {name}"
    return OTHER_MARGIN, f"default for data other than MNIST, CIFAR-10 and IMDB ({name or 'no data class'})"


def _baseline_amounts(
    parser: argparse.ArgumentParser, baseline: str, pruning: Namespace, config: Namespace, target: float | None = None
) -> dict[int, float]:
    """The baseline's ModelPruning schedule: its own target (or the pruned arm's), over the pruned arm's epochs."""
    target = pruning.get("target_sparsity") if target is None else target
    if target is None:
        parser.error(f"argument --baseline: {baseline} prunes to the pruned arm's target: set "
                     "`target_sparsity` in --prune-config or --pruning.target_sparsity")  # fmt: skip
    max_epochs = config.get("trainer.max_epochs")
    if max_epochs is None or max_epochs < 1:
        parser.error(f"argument --baseline: {baseline} spreads its pruning over epochs: set --trainer.max_epochs")
    window = PruningWindow(pruning.get("start_epoch") or 0, pruning.get("end_epoch"), pruning.get("interval") or 1,
                           pruning.get("interval_unit") or "epoch")  # fmt: skip
    epochs = window.decision_epochs(max_epochs)
    if not epochs:
        parser.error(f"argument --baseline: the pruned arm's window holds no pruning epoch for {baseline}")
    return baseline_schedule(baseline, target, epochs)
