"""One run of a comparison (train, test and profile one arm at one seed), its ``status.json``, and the plan.

Each run lives in ``OUTPUT/runs/<arm>-seed<k>/`` with a ``status.json``; ``passes.run_comparison`` skips the runs
that finished before and retries the others, so running the same command again resumes.
"""

import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import Namespace
from lightning.pytorch.loggers import WandbLogger

from lightning_prune.cli.app import LightningPruneCLI, arguments_alone
from lightning_prune.compare import provenance
from lightning_prune.compare.baselines import baseline_callback
from lightning_prune.compare.claims import Claim, claims_folder
from lightning_prune.compare.recorder import CurveRecorder, TestCorrectRecorder, pruning_callback
from lightning_prune.compare.results import now, write_json
from lightning_prune.compare.status import PRUNED, STATUS_FILE, UNPRUNED, RunStatus, read_status
from lightning_prune.compare.testset import TEST_CORRECT_FILE, save_test_correct, targets_hash
from lightning_prune.inputs import example_inputs

__all__ = ["PRUNED", "UNPRUNED", "Arm", "Comparison", "RunSpec", "read_status", "run_and_record", "say"]


@dataclass(frozen=True)
class Arm:
    """One arm: its LightningCLI arguments (before the per-run ones), for a baseline ModelPruning's schedule, and the
    config LightningCLI resolves from the arguments (``provenance.without_per_run_keys``; None when not planned from
    a command line), which the runs' config hashes are made of."""

    name: str
    args: tuple[str, ...]
    schedule: dict[int, float] | None = None
    config: dict[str, Any] | None = field(default=None, compare=False, hash=False)


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs, beyond its arm's arguments."""

    arm: Arm
    seed: int
    directory: Path
    group: str
    wandb: bool
    profile_threads: int
    parameters: list[str] | None = None
    exclude: list[str] | None = None

    @property
    def name(self) -> str:
        return f"{self.arm.name}-seed{self.seed}"

    @property
    def claims(self) -> Path:
        """The run's claims folder, ``OUTPUT/claims/<run>/``: outside the run's folder, which a new attempt empties."""
        return claims_folder(self.directory.parent.parent, self.name)

    @property
    def config_hash(self) -> str | None:
        """The hash of the run's resolved config with its seed and what ``compare`` adds (the baseline's schedule,
        which weights sparsity counts, the profiling threads); the same for the same run in another folder."""
        if self.arm.config is None:
            return None
        extra = {"baseline_schedule": None if self.arm.schedule is None else {str(k): v for k, v in
                                                                             self.arm.schedule.items()},
                 "sparsity_of": {"parameters": self.parameters, "exclude": self.exclude},
                 "profile_threads": self.profile_threads}  # fmt: skip
        return provenance.content_hash(provenance.run_config(self.arm.config, self.seed, extra))

    @property
    def task_hash(self) -> str | None:
        """The hash of the task the run trains (model, data, trainer, optimizer) without pruning, baseline or seed."""
        return None if self.arm.config is None else provenance.content_hash(provenance.task_config(self.arm.config))

    @property
    def cli_args(self) -> list[str]:
        # last, so that they win over the configs and the overrides
        return [*self.arm.args, "--seed_everything", str(self.seed), "--trainer.default_root_dir", str(self.directory)]


# -- one run -----------------------------------------------------------------------------------------------------------


def logger_configs(config: Any) -> list[Namespace]:
    """The loggers of a ``trainer.logger`` config (one logger or a list) that name a class."""
    loggers = config if isinstance(config, list) else [config]
    return [logger for logger in loggers if isinstance(logger, Namespace) and logger.get("class_path")]


def is_wandb(logger: Namespace) -> bool:
    """Whether a logger of ``logger_configs`` is a WandbLogger."""
    return str(logger["class_path"]).endswith("WandbLogger")


class _RunCLI(LightningPruneCLI):
    """LightningPruneCLI for one run of a comparison: the loggers write into the run's directory, W&B runs are grouped
    by comparison and carry the arm and seed in their config, and without W&B a CSVLogger takes its place."""

    def __init__(self, *args: Any, spec: RunSpec, **kwargs: Any) -> None:
        self.spec = spec
        super().__init__(*args, **kwargs)

    def before_instantiate_classes(self) -> None:
        self.config["trainer.logger"] = _run_loggers(self.config.get("trainer.logger"), self.spec)
        super().before_instantiate_classes()


def _run_loggers(config: Any, spec: RunSpec) -> Any:
    """The logger config of one run. W&B's service resolves relative paths against its own working directory: every
    save_dir here is absolute."""
    directory = str(spec.directory)
    if not spec.wandb:
        return Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(save_dir=directory))
    for logger in logger_configs(config):
        if logger.get("init_args") is None:
            logger["init_args"] = Namespace()
        init_args = logger["init_args"]
        init_args["save_dir"] = directory
        if is_wandb(logger):
            init_args["group"] = spec.group
            init_args["name"] = spec.name
            init_args["job_type"] = "train"
            init_args["tags"] = [spec.arm.name]
            init_args["config"] = {"arm": spec.arm.name, "seed": spec.seed, "comparison": spec.group}
    return config


def train_and_test(cli: LightningPruneCLI, spec: RunSpec) -> tuple[float, dict[str, float]]:
    """Fit, then test the *final* model (not the best checkpoint: the final one is the pruned one).

    Returns:
        The training wall time in seconds and the test metrics.
    """
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    train_time = time.perf_counter() - start
    results = cli.trainer.test(cli.model, cli.datamodule, verbose=False)
    return train_time, {key: float(value) for key, value in (results[0] if results else {}).items()}


def _example_input(cli: LightningPruneCLI) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The inputs of the first test batch, on the CPU: a batch is ``(*inputs, target)``."""
    if cli.datamodule is None:
        raise RuntimeError("`compare` profiles on a test batch of the DataModule: configure `data:`")
    batch = next(iter(cli.datamodule.test_dataloader()))
    inputs = example_inputs(batch, size=len(batch[-1]))
    if inputs is None:
        raise RuntimeError("`compare` profiles on a test batch of the form (*inputs, target)")
    return tuple(t.cpu() for t in inputs) if isinstance(inputs, tuple) else inputs.cpu()


def profile_final_model(cli: LightningPruneCLI, pruning: Any, threads: int) -> dict[str, float]:
    """``profiling.profile`` of the final model on one test batch, on the CPU with ``threads`` threads.

    A structured run (``pruning``, its RealTimePruningCallback, in structured mode) is profiled on its compact export
    (``RealTimePruningCallback.export``) so that its speed-up is measured, not assumed.
    """
    from lightning_prune.profiling import profile  # measured only once a run finishes

    module = cli.model.cpu()
    if pruning is not None and pruning.mode == "structured" and hasattr(pruning, "export"):
        module = pruning.export(module)
    return profile(module, _example_input(cli), threads=threads)


class ClaimLost(Exception):
    """Another process took this run over (this one stalled for longer than the claim timeout): stop, leave the
    run's files to it."""


class _ClaimWatch(L.Callback):
    """Stops a run at the next batch once its claim is lost, so that two processes never train into one folder for
    long."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim

    def on_train_batch_start(self, *args: Any) -> None:
        if self.claim.lost:
            raise ClaimLost(f"{self.claim.path}: another process took this run over")


def run_one(spec: RunSpec, claim: Claim | None = None) -> dict[str, Any]:
    """Train, test and profile one run of one arm (stopping with ``ClaimLost`` if ``claim`` is lost).

    Returns:
        The metrics (``METRICS``' names, ``epochs``, ``wandb_run``) and ``curves``, a list of per-epoch rows.

    Raises:
        KeyboardInterrupt: The run was interrupted (Lightning turns Ctrl-C during fit into ``SystemExit(1)``).
    """
    spec.directory.mkdir(parents=True, exist_ok=True)
    sigint = signal.getsignal(signal.SIGINT)
    with arguments_alone():  # not compare's own options: LightningCLI would warn of them at every run
        cli = _RunCLI(args=spec.cli_args, run=False, spec=spec)
    status = "failed"
    try:
        pruning = pruning_callback(cli.trainer)
        recorder = CurveRecorder(spec.parameters, spec.exclude, pruning)
        if spec.arm.schedule is not None:
            cli.trainer.callbacks.append(baseline_callback(cli.model, spec.arm.schedule, spec.parameters, spec.exclude))
        # after any pruning callback, so each epoch's row sees that epoch's cut
        cli.trainer.callbacks.append(recorder)
        test_correct = TestCorrectRecorder()
        cli.trainer.callbacks.append(test_correct)
        if claim is not None:
            cli.trainer.callbacks.append(_ClaimWatch(claim))
        try:
            train_time, tested = train_and_test(cli, spec)
        except SystemExit as err:
            if cli.trainer.interrupted:
                raise KeyboardInterrupt from err
            raise
        metrics = {
            "test_acc": tested.get("test_acc"),
            "test_loss": tested.get("test_loss"),
            "sparsity": recorder.sparsity(cli.model),
            "train_time_s": train_time,
            "epochs": cli.trainer.current_epoch,
            **profile_final_model(cli, pruning, spec.profile_threads),
            "wandb_run": _wandb_run_dir(cli.trainer),
            **_save_test_correct(test_correct, spec.directory),
        }
        for logger in cli.trainer.loggers:
            logger.log_metrics({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        status = "success"
        return {**metrics, "curves": recorder.rows}
    finally:
        _close_loggers(cli.trainer, status)
        _restore_sigint(sigint)


def _save_test_correct(recorder: TestCorrectRecorder, directory: Path) -> dict[str, Any]:
    """Write the run's per-example test results (``test_correct.npz``); their count and the targets' hash."""
    if recorder.correct is None or recorder.targets is None:
        return {"test_examples": None, "test_targets_sha256": None}
    save_test_correct(directory / TEST_CORRECT_FILE, recorder.correct, recorder.targets)
    return {"test_examples": len(recorder.correct), "test_targets_sha256": targets_hash(recorder.targets)}


def _wandb_run_dir(trainer: "L.Trainer") -> str | None:
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return str(Path(logger.experiment.dir).parent)
    return None


def _close_loggers(trainer: "L.Trainer", status: str) -> None:
    for logger in trainer.loggers:
        logger.finalize(status)
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        # the next run must start a W&B run of its own
        wandb.run.finish(exit_code=0 if status == "success" else 1)


def _restore_sigint(handler: Any) -> None:
    # Lightning ignores SIGINT after a KeyboardInterrupt; give Ctrl-C back to the rest of the comparison
    if threading.current_thread() is threading.main_thread() and handler is not None:
        signal.signal(signal.SIGINT, handler)


# -- the comparison: runs, resume --------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """A planned comparison: where it writes, its seeds and arms, and what every run shares."""

    output: Path
    seeds: list[int]
    arms: list[Arm]
    wandb: bool
    project: str
    profile_threads: int = 1
    parameters: list[str] | None = None
    exclude: list[str] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    # the equivalence / non-inferiority margin in points of test accuracy, and where it came from
    margin: float = 0.5
    margin_source: str = "default for data other than MNIST, CIFAR-10 and IMDB"
    # keep finished runs made by other code or config instead of running them again (the report lists them)
    reuse_stale: bool = False

    @property
    def group(self) -> str:
        return self.output.name

    def specs(self) -> list[RunSpec]:
        # seed by seed, so that a stopped comparison leaves runs that pair up
        return [
            RunSpec(
                arm,
                seed,
                self.output / "runs" / f"{arm.name}-seed{seed}",
                self.group,
                self.wandb,
                self.profile_threads,
                self.parameters,
                self.exclude,
            )
            for seed in self.seeds
            for arm in self.arms
        ]


def say(message: str) -> None:
    """A progress line on stderr."""
    print(f"[compare] {message}", file=sys.stderr, flush=True)


def run_and_record(spec: RunSpec, previous: dict[str, Any] | None, claim: Claim | None = None) -> dict[str, Any]:
    """Run ``spec`` afresh (its folder emptied) and record it in its ``status.json``: running, then finished, crashed
    (with the traceback) or interrupted. A run whose ``claim`` was lost writes nothing more: the run is the other
    process's now.

    Raises:
        KeyboardInterrupt: The run was interrupted (recorded first).
    """
    attempts = (previous or {}).get("attempts", 0) + 1
    if spec.directory.exists():  # what a crashed or interrupted attempt left behind
        shutil.rmtree(spec.directory)
    base = {"arm": spec.arm.name, "seed": spec.seed, "attempts": attempts, "started": now(),
            "run_dir": str(spec.directory), **provenance.code_state(spec.directory.parent.parent),
            "config_hash": spec.config_hash, "task_hash": spec.task_hash, **provenance.versions()}  # fmt: skip
    write_json(spec.directory / STATUS_FILE, {**base, "status": RunStatus.RUNNING})
    try:
        record = {**base, "status": RunStatus.FINISHED, **run_one(spec, claim)}
    except KeyboardInterrupt:
        write_json(spec.directory / STATUS_FILE, {**base, "status": RunStatus.INTERRUPTED, "ended": now()})
        raise
    except ClaimLost:
        record = {**base, "status": RunStatus.LOST}
    except Exception as err:
        record = {**base, "status": RunStatus.CRASHED, "error": "".join(traceback.format_exception(err))}
    record["ended"] = now()
    if claim is not None and claim.lost:
        return {**record, "status": RunStatus.LOST}
    write_json(spec.directory / STATUS_FILE, record)
    return record
