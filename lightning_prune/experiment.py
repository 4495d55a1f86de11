"""``lightning-prune compare``: pruned vs unpruned (and baseline) runs over seeds, with statistics and a report.

Every arm trains from the same configs with the same seeds: seed ``k`` gives every arm the same initial weights and the
same data order, so the runs pair up by seed and the paired t-test is the primary test. Each run lives in
``OUTPUT/runs/<arm>-seed<k>/`` with a ``status.json``; running the same command again skips the finished runs and
retries the others. The results go to ``results.csv`` (a row per run), ``curves.csv`` (a row per run and epoch),
``summary.json`` (the statistics), ``report.md`` and PNG plots in ``OUTPUT``, and, with W&B, to one W&B group per
comparison plus a summary run.

The file has four parts: statistics (pure functions over numbers), the baselines' pruning schedules (pure), running the
arms (Lightning), and the outputs (tables, plots, report, W&B).
"""

import argparse
import json
import math
import re
import shlex
import shutil
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback, ModelPruning
from lightning.pytorch.loggers import WandbLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats

from lightning_prune.callback import DEFAULT_END_FRACTION, RealTimePruningCallback
from lightning_prune.cli import LightningPruneCLI, choose_wandb_mode
from lightning_prune.layers import prunable_weights

UNPRUNED, PRUNED = "unpruned", "pruned"
BASELINES = ("modelpruning", "gmp")
ALPHA = 0.05
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
STATUS_FILE = "status.json"
SETTINGS_FILE = "comparison.json"
PRIMARY_TEST = "paired t-test"
PRIMARY_TEST_REASON = (
    "the same seed gives every arm the same initial weights and the same data order, so runs pair up by seed; the "
    "paired test removes the seed-to-seed variation shared by both arms and compares only the within-seed differences, "
    "which makes it the most sensitive of the three tests (Welch's t-test and Mann-Whitney U ignore the pairing)"
)


@dataclass(frozen=True)
class Metric:
    """A per-run metric: its column in ``results.csv``, how it is shown (``value * scale`` in ``unit``)."""

    name: str
    label: str
    unit: str = ""
    scale: float = 1.0
    digits: int = 4

    def show(self, value: float | None) -> str:
        if value is None or not math.isfinite(value):
            return "n/a"
        return f"{value * self.scale:,.{self.digits}f}"

    @property
    def title(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label


# ptflops counts multiply-accumulates per sample; one MAC counts as one FLOP, the convention of pruning papers
METRICS = (
    Metric("test_acc", "test accuracy", "%", 100, 2),
    Metric("test_loss", "test loss", "", 1, 4),
    Metric("sparsity", "final sparsity of the prunable weights", "%", 100, 2),
    Metric("params_total", "parameters", "M", 1e-6, 4),
    Metric("params_nonzero", "non-zero parameters", "M", 1e-6, 4),
    Metric("flops_dense", "dense FLOPs per sample", "MFLOPs", 1e-6, 3),
    Metric("flops_effective", "effective FLOPs per sample", "MFLOPs", 1e-6, 3),
    Metric("latency_ms_per_batch", "latency per test batch", "ms", 1, 2),
    Metric("state_dict_bytes", "model size, dense", "MB", 1e-6, 3),
    Metric("sparse_bytes", "model size, sparse", "MB", 1e-6, 3),
    Metric("train_time_s", "training wall time", "s", 1, 1),
)
METRIC_BY_NAME = {metric.name: metric for metric in METRICS}
CURVE_COLUMNS = ("train_loss", "val_loss", "val_acc", "sparsity", "ratio")


# -- statistics: pure functions, no Lightning -------------------------------------------------------------------------


@dataclass(frozen=True)
class TestResult:
    """One test's outcome. ``p_value`` is None when the test is not possible; ``note`` then says why."""

    __test__ = False  # not a pytest test class

    statistic: float | None = None
    p_value: float | None = None
    df: float | None = None
    note: str = ""


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]


def _constant(values: np.ndarray) -> bool:
    # equal to 9 significant digits counts as equal: float noise in a measured count is not variance to test
    return bool(np.ptp(values) <= 1e-9 * np.max(np.abs(values)))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Student-t confidence interval of the mean: ``mean +- t_{(1+c)/2, n-1} * s / sqrt(n)``.

    Args:
        values: The sample (non-finite values are dropped).
        confidence: The coverage, e.g. 0.95.

    Returns:
        ``(low, high)``, ``(mean, mean)`` for a sample without variance, None for fewer than 2 values.

    Example:
        >>> low, high = t_interval([1.0, 2.0, 3.0])  # mean 2, s 1, t_{0.975, 2} = 4.3027
        >>> round(low, 4), round(high, 4)
        (-0.4841, 4.4841)
        >>> t_interval([5.0]) is None
        True
    """
    x = _finite(values)
    if len(x) < 2:
        return None
    mean = float(np.mean(x))
    if _constant(x):
        return mean, mean
    half = float(stats.t.ppf((1 + confidence) / 2, len(x) - 1) * np.std(x, ddof=1) / math.sqrt(len(x)))
    return mean - half, mean + half


def bootstrap_interval(
    values: Sequence[float],
    confidence: float = CONFIDENCE,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of the mean (``scipy.stats.bootstrap``), reproducible by ``seed``.

    Percentile rather than scipy's default BCa: BCa's jackknife acceleration is unstable or undefined at the handful
    of seeds a comparison runs.

    Returns:
        ``(low, high)``, ``(mean, mean)`` for a sample without variance, None for fewer than 2 values.

    Example:
        >>> bootstrap_interval([2.0, 2.0, 2.0])
        (2.0, 2.0)
        >>> bootstrap_interval([1.0, 2.0, 3.0, 4.0]) == bootstrap_interval([1.0, 2.0, 3.0, 4.0])
        True
    """
    x = _finite(values)
    if len(x) < 2:
        return None
    if _constant(x):
        return float(x[0]), float(x[0])
    result = stats.bootstrap(
        (x,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def describe(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean, sample standard deviation, t-based and bootstrap confidence intervals of one arm's metric.

    Example:
        >>> d = describe([1.0, 2.0, 3.0])
        >>> d["n"], d["mean"], d["std"], d["note"]
        (3, 2.0, 1.0, '')
        >>> describe([0.9])["note"]
        'one seed: no interval'
    """
    x = _finite(values)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "t_ci": None, "bootstrap_ci": None, "note": "no finished run"}
    t_ci, boot = t_interval(x, confidence), bootstrap_interval(x, confidence)
    return {
        "n": n,
        "mean": float(np.mean(x)),
        "std": float(np.std(x, ddof=1)) if n > 1 else None,
        "t_ci": list(t_ci) if t_ci else None,
        "bootstrap_ci": list(boot) if boot else None,
        "note": "one seed: no interval" if n == 1 else "",
    }


def _too_few(*samples: np.ndarray) -> str:
    if min(len(s) for s in samples) < 2:
        return "no test possible: fewer than 2 seeds"
    return ""


def welch_t_test(reference: Sequence[float], other: Sequence[float]) -> TestResult:
    """Welch's unequal-variance t-test of ``mean(other) - mean(reference)``, two-sided.

    Example:
        >>> r = welch_t_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])  # t = 3 / sqrt(1/3 + 1/3), df = 4
        >>> round(r.statistic, 4), round(r.df, 4), round(r.p_value, 4)
        (3.6742, 4.0, 0.0213)
    """
    a, b = _finite(reference), _finite(other)
    if note := _too_few(a, b):
        return TestResult(note=note)
    if _constant(a) and _constant(b):
        return TestResult(note="no test possible: zero variance in both arms")
    with warnings.catch_warnings():
        # one arm without variance is fine for Welch (its term of the standard error is 0), but scipy warns about it
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        result = stats.ttest_ind(b, a, equal_var=False)
    return TestResult(float(result.statistic), float(result.pvalue), float(result.df))


def paired_t_test(reference: Mapping[Any, float], other: Mapping[Any, float]) -> TestResult:
    """Paired t-test over the keys (seeds) both arms have, of ``other - reference``, two-sided.

    Example:
        >>> r = paired_t_test({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 4.0, 2: 5.0})  # differences 1, 2, 2: t = 5
        >>> round(r.statistic, 4), r.df, round(r.p_value, 4)
        (5.0, 2.0, 0.0377)
        >>> paired_t_test({0: 1.0, 1: 2.0}, {0: 2.0, 1: 3.0}).note
        'no test possible: the paired differences have zero variance'
    """
    differences = _paired_differences(reference, other)
    if len(differences) < 2:
        return TestResult(note="no test possible: fewer than 2 seeds finished in both arms")
    if _constant(differences):
        return TestResult(note="no test possible: the paired differences have zero variance")
    result = stats.ttest_1samp(differences, 0.0)
    return TestResult(float(result.statistic), float(result.pvalue), float(len(differences) - 1))


def _paired_differences(reference: Mapping[Any, float], other: Mapping[Any, float]) -> np.ndarray:
    keys = [k for k in sorted(reference) if k in other]
    pairs = np.asarray([(reference[k], other[k]) for k in keys], dtype=float).reshape(-1, 2)
    pairs = pairs[np.isfinite(pairs).all(axis=1)]
    return pairs[:, 1] - pairs[:, 0]


def mann_whitney_u(reference: Sequence[float], other: Sequence[float]) -> TestResult:
    """Mann-Whitney U test (two-sided); the statistic is U of ``other``.

    Example:
        >>> r = mann_whitney_u([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])  # fully separated: exact p = 2 / C(6, 3)
        >>> r.statistic, round(r.p_value, 4)
        (9.0, 0.1)
    """
    a, b = _finite(reference), _finite(other)
    if note := _too_few(a, b):
        return TestResult(note=note)
    if _constant(np.concatenate([a, b])):
        return TestResult(note="no test possible: every value is the same")
    result = stats.mannwhitneyu(b, a, alternative="two-sided")
    return TestResult(float(result.statistic), float(result.pvalue))


def cohens_d(reference: Sequence[float], other: Sequence[float]) -> TestResult:
    """Cohen's d of ``other - reference`` with the pooled standard deviation (no p-value: an effect size).

    Example:
        >>> cohens_d([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]).statistic
        3.0
    """
    a, b = _finite(reference), _finite(other)
    if len(a) < 2 or len(b) < 2:
        return TestResult(note="no effect size: fewer than 2 seeds")
    pooled = math.sqrt(((len(a) - 1) * np.var(a, ddof=1) + (len(b) - 1) * np.var(b, ddof=1)) / (len(a) + len(b) - 2))
    if pooled == 0:
        return TestResult(note="no effect size: zero variance in both arms")
    return TestResult(float((np.mean(b) - np.mean(a)) / pooled))


def compare_arms(reference: Mapping[Any, float], other: Mapping[Any, float]) -> dict[str, Any]:
    """Every test of one metric between two arms, given as ``{seed: value}``: differences are ``other - reference``.

    Example:
        >>> c = compare_arms({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 4.0, 2: 5.0})
        >>> c["n_pairs"], round(c["difference"], 4), round(c["paired_t"]["statistic"], 1)
        (3, 1.6667, 5.0)
    """
    a, b = _finite(list(reference.values())), _finite(list(other.values()))
    mean_a = float(np.mean(a)) if len(a) else None
    mean_b = float(np.mean(b)) if len(b) else None
    differences = _paired_differences(reference, other)
    return {
        "n_reference": len(a),
        "n_other": len(b),
        "n_pairs": len(differences),
        "mean_reference": mean_a,
        "mean_other": mean_b,
        "difference": mean_b - mean_a if mean_a is not None and mean_b is not None else None,
        # how far apart the arms can be, seed for seed: "within 0.1 points" is read off this interval
        "paired_difference_t_ci": t_interval(differences),
        "paired_t": asdict(paired_t_test(reference, other)),
        "welch_t": asdict(welch_t_test(a, b)),
        "mann_whitney_u": asdict(mann_whitney_u(a, b)),
        "cohens_d": asdict(cohens_d(a, b)),
    }


# -- baseline schedules: pure ------------------------------------------------------------------------------------------


def pruning_epochs(
    max_epochs: int, start_epoch: int = 0, end_epoch: int | None = None, interval: int = 1, interval_unit: str = "epoch"
) -> list[int]:
    """The epochs at whose end RealTimePruningCallback may prune, with its defaults (end: 80% of ``max_epochs``).

    Step intervals fall in every epoch of the window, so the baselines prune at the end of each of them.

    Example:
        >>> pruning_epochs(10)
        [0, 1, 2, 3, 4, 5, 6, 7]
        >>> pruning_epochs(10, start_epoch=2, interval=2)
        [3, 5, 7]
    """
    if end_epoch is None:
        end_epoch = max(start_epoch + 1, int(DEFAULT_END_FRACTION * max_epochs))
    window = range(start_epoch, min(end_epoch, max_epochs))
    if interval_unit == "epoch":
        return [epoch for epoch in window if (epoch + 1) % interval == 0]
    return list(window)


def uniform_amounts(target: float, steps: int) -> list[float]:
    """The same fraction of the remaining weights at every step, reaching ``target`` after ``steps``:
    ``1 - (1 - target) ** (1 / steps)`` (torch.prune's ``amount`` applies to the weights not pruned yet).

    Example:
        >>> [round(a, 4) for a in uniform_amounts(0.75, 2)]
        [0.5, 0.5]
    """
    if steps < 1:
        return []
    return [1 - (1 - target) ** (1 / steps)] * steps


def gmp_sparsities(target: float, steps: int) -> list[float]:
    """The cubic gradual-magnitude schedule, cumulative: ``s_t = target * (1 - (1 - t / steps) ** 3)``, t = 1..steps.

    Example:
        >>> [round(s, 4) for s in gmp_sparsities(0.9, 3)]
        [0.6333, 0.8667, 0.9]
    """
    return [target * (1 - (1 - t / steps) ** 3) for t in range(1, steps + 1)]


def amounts_from_sparsities(sparsities: Sequence[float]) -> list[float]:
    """Per-step fractions of the *remaining* weights that reach the cumulative ``sparsities``:
    ``(s_t - s_{t-1}) / (1 - s_{t-1})``.

    Example:
        >>> [round(a, 4) for a in amounts_from_sparsities([0.5, 0.75, 0.875])]
        [0.5, 0.5, 0.5]
    """
    amounts, previous = [], 0.0
    for sparsity in sparsities:
        amounts.append((sparsity - previous) / (1 - previous))
        previous = sparsity
    return amounts


class EpochAmounts:
    """``ModelPruning``'s ``amount`` callable: the fraction to prune at the end of each epoch, 0 elsewhere.

    Example:
        >>> amount = EpochAmounts({1: 0.5})
        >>> amount(0), amount(1)
        (0.0, 0.5)
    """

    def __init__(self, amounts: Mapping[int, float]) -> None:
        self.amounts = dict(amounts)

    def __call__(self, epoch: int) -> float:
        return self.amounts.get(epoch, 0.0)


def baseline_schedule(baseline: str, target: float, epochs: Sequence[int]) -> dict[int, float]:
    """Per-epoch amounts of a baseline: ``"modelpruning"`` uniform, ``"gmp"`` cubic, both to ``target`` at the end.

    Example:
        >>> {e: round(a, 4) for e, a in baseline_schedule("gmp", 0.9, [0, 1, 2]).items()}
        {0: 0.6333, 1: 0.6364, 2: 0.25}
    """
    if baseline == "modelpruning":
        amounts = uniform_amounts(target, len(epochs))
    elif baseline == "gmp":
        amounts = amounts_from_sparsities(gmp_sparsities(target, len(epochs)))
    else:
        raise ValueError(f"`baseline` must be one of {BASELINES}, got {baseline!r}")
    return dict(zip(epochs, amounts, strict=True))


# -- measuring a run ---------------------------------------------------------------------------------------------------


def _effective_weight(module: torch.nn.Module, name: str) -> torch.Tensor | None:
    """The weight as the forward pass sees it: torch.prune keeps ``<name>_orig`` and ``<name>_mask``."""
    owner_name, _, attr = name.rpartition(".")
    try:
        owner = module.get_submodule(owner_name)
    except AttributeError:
        return None
    mask = getattr(owner, f"{attr}_mask", None)
    if mask is not None and f"{attr}_orig" in owner._parameters:
        return owner._parameters[f"{attr}_orig"] * mask
    weight = getattr(owner, attr, None)
    return weight if isinstance(weight, torch.Tensor) else None


class CurveRecorder(Callback):
    """Records each epoch's losses, validation accuracy, sparsity and (our callback's) ratio, for every arm alike.

    Sparsity is ``1 - non-zero / initial count`` over the prunable weights (``prunable_weights``) counted when the fit
    starts: the fraction of zeros for masked weights, and it also counts weights that structured pruning removed.

    Args:
        parameters: ``prunable_weights``'s ``parameters`` (the pruned arm's choice, so that every arm measures the same
            weights).
        exclude: ``prunable_weights``'s ``exclude``.
        pruning: The arm's RealTimePruningCallback, whose ratio is recorded; None for the other arms.
    """

    def __init__(
        self,
        parameters: list[str] | None = None,
        exclude: list[str] | None = None,
        pruning: RealTimePruningCallback | None = None,
    ) -> None:
        self.parameters = parameters
        self.exclude = exclude
        self.pruning = pruning
        self.names: list[str] = []
        self.initial = 0
        self.rows: list[dict[str, Any]] = []

    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not self.names:
            weights = prunable_weights(pl_module, self.parameters, self.exclude)
            self.names = list(weights)
            self.initial = sum(w.numel() for w in weights.values())

    def sparsity(self, module: torch.nn.Module) -> float:
        """Fraction of the initially prunable weights that are zero or gone now."""
        if not self.initial:
            return 0.0
        with torch.no_grad():
            weights = [_effective_weight(module, name) for name in self.names]
            nonzero = sum(int(torch.count_nonzero(w)) for w in weights if w is not None)
        return 1 - nonzero / self.initial

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        metrics = trainer.callback_metrics
        epoch = trainer.current_epoch
        ratio = None
        if self.pruning is not None:
            entries = [entry for entry in self.pruning.history if entry["epoch"] == epoch]
            ratio = entries[-1]["ratio"] if entries else None
        self.rows.append(
            {
                "epoch": epoch,
                "train_loss": _number(metrics.get("train_loss")),
                "val_loss": _number(metrics.get("val_loss")),
                "val_acc": _number(metrics.get("val_acc")),
                "sparsity": self.sparsity(pl_module),
                "ratio": ratio,
            }
        )


def _number(value: Any) -> float | None:
    if value is None:
        return None
    return float(value.item() if isinstance(value, torch.Tensor) else value)


# -- one run -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    """One arm: its LightningCLI arguments (before the per-run ones) and, for a baseline, ModelPruning's schedule."""

    name: str
    args: tuple[str, ...]
    schedule: dict[int, float] | None = None


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
    def cli_args(self) -> list[str]:
        # last, so that they win over the configs and the overrides
        return [*self.arm.args, "--seed_everything", str(self.seed), "--trainer.default_root_dir", str(self.directory)]


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
    for logger in config if isinstance(config, list) else [config]:
        if not isinstance(logger, Namespace) or not logger.get("class_path"):
            continue
        if logger.get("init_args") is None:
            logger["init_args"] = Namespace()
        init_args = logger["init_args"]
        init_args["save_dir"] = directory
        if str(logger["class_path"]).endswith("WandbLogger"):
            init_args["group"] = spec.group
            init_args["name"] = spec.name
            init_args["job_type"] = "train"
            init_args["tags"] = [spec.arm.name]
            init_args["config"] = {"arm": spec.arm.name, "seed": spec.seed, "comparison": spec.group}
    return config


def _pruning_callback(trainer: "L.Trainer") -> RealTimePruningCallback | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, RealTimePruningCallback)), None)


def baseline_callback(module: torch.nn.Module, names: Sequence[str], schedule: Mapping[int, float]) -> ModelPruning:
    """Lightning's ModelPruning, global L1 unstructured over the weights ``names``, pruning ``schedule[epoch]`` of the
    remaining weights at the end of each epoch, made permanent when training ends."""
    targets = []
    for name in names:
        owner, _, attr = name.rpartition(".")
        targets.append((module.get_submodule(owner), attr))
    return ModelPruning(
        "l1_unstructured",
        parameters_to_prune=targets,
        use_global_unstructured=True,
        amount=EpochAmounts(schedule),
        use_lottery_ticket_hypothesis=False,
        make_pruning_permanent=True,
        verbose=0,
    )


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
    inputs = tuple(t.cpu() for t in batch[:-1])
    return inputs[0] if len(inputs) == 1 else inputs


def profile_final_model(
    cli: LightningPruneCLI, pruning: RealTimePruningCallback | None, threads: int
) -> dict[str, float]:
    """``profiling.profile`` of the final model on one test batch, on the CPU with ``threads`` threads.

    A structured run is profiled on its compact export (``RealTimePruningCallback.export``) so that its speed-up is
    measured, not assumed.
    """
    from lightning_prune.profiling import profile  # measured only once a run finishes

    module = cli.model.cpu()
    if pruning is not None and pruning.mode == "structured" and hasattr(pruning, "export"):
        module = pruning.export(module)
    return profile(module, _example_input(cli), threads=threads)


def run_one(spec: RunSpec) -> dict[str, Any]:
    """Train, test and profile one run of one arm.

    Returns:
        The metrics (``METRICS``' names, ``epochs``, ``wandb_run``) and ``curves``, a list of per-epoch rows.

    Raises:
        KeyboardInterrupt: The run was interrupted (Lightning turns Ctrl-C during fit into ``SystemExit(1)``).
    """
    spec.directory.mkdir(parents=True, exist_ok=True)
    sigint = signal.getsignal(signal.SIGINT)
    cli = _RunCLI(args=spec.cli_args, run=False, spec=spec)
    status = "failed"
    try:
        pruning = _pruning_callback(cli.trainer)
        recorder = CurveRecorder(spec.parameters, spec.exclude, pruning)
        if spec.arm.schedule is not None:
            names = list(prunable_weights(cli.model, spec.parameters, spec.exclude))
            cli.trainer.callbacks.append(baseline_callback(cli.model, names, spec.arm.schedule))
        # after any pruning callback, so each epoch's row sees that epoch's cut
        cli.trainer.callbacks.append(recorder)
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
        }
        for logger in cli.trainer.loggers:
            logger.log_metrics({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        status = "success"
        return {**metrics, "curves": recorder.rows}
    finally:
        _close_loggers(cli.trainer, status)
        _restore_sigint(sigint)


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


# -- the comparison: plan, runs, resume -------------------------------------------------------------------------------


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


def read_status(directory: Path) -> dict[str, Any] | None:
    path = directory / STATUS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:  # a run killed while writing it: run it again
        return None


def _write_json(path: Path, content: Any) -> None:
    # write then rename: a kill mid-write never leaves half a file behind
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(content, indent=2, default=str))
    partial.replace(path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _say(message: str) -> None:
    print(f"[compare] {message}", file=sys.stderr, flush=True)


def run_comparison(comparison: Comparison) -> list[dict[str, Any]]:
    """Run every (arm, seed) that has not finished yet; return each run's status record, in plan order.

    A crashed run is recorded (``status: crashed`` with the traceback) and the comparison goes on. An interrupted one
    is recorded and the KeyboardInterrupt propagates.

    Raises:
        KeyboardInterrupt: A run was interrupted.
    """
    specs = comparison.specs()
    records, durations = [], []
    for index, spec in enumerate(specs, 1):
        previous = read_status(spec.directory)
        where = f"run {index}/{len(specs)}: {spec.arm.name}, seed {spec.seed}"
        if previous is not None and previous.get("status") == "finished":
            _say(f"{where}: finished earlier, skipped")
            records.append(previous)
            continue
        left = sum(1 for s in specs[index - 1 :] if (read_status(s.directory) or {}).get("status") != "finished")
        eta = f"ETA {_duration(left * sum(durations) / len(durations))}" if durations else "ETA after this run"
        _say(f"{where} ({eta})")
        start = time.perf_counter()
        record = _run_and_record(spec, previous)
        durations.append(time.perf_counter() - start)
        records.append(record)
        _say(f"{where}: {record['status']} in {_duration(durations[-1])}" + _headline(record))
    return records


def _headline(record: dict[str, Any]) -> str:
    if record["status"] != "finished":
        last = record.get("error", "").strip().splitlines()
        return f": {last[-1]}" if last else ""
    return f", test_acc {record.get('test_acc')}, sparsity {record.get('sparsity', 0):.4f}"


def _run_and_record(spec: RunSpec, previous: dict[str, Any] | None) -> dict[str, Any]:
    attempts = (previous or {}).get("attempts", 0) + 1
    if spec.directory.exists():  # what a crashed or interrupted attempt left behind
        shutil.rmtree(spec.directory)
    base = {"arm": spec.arm.name, "seed": spec.seed, "attempts": attempts, "started": _now(),
            "run_dir": str(spec.directory)}  # fmt: skip
    _write_json(spec.directory / STATUS_FILE, {**base, "status": "running"})
    try:
        record = {**base, "status": "finished", **run_one(spec)}
    except KeyboardInterrupt:
        _write_json(spec.directory / STATUS_FILE, {**base, "status": "interrupted", "ended": _now()})
        raise
    except Exception as err:
        record = {**base, "status": "crashed", "error": "".join(traceback.format_exception(err))}
    record["ended"] = _now()
    _write_json(spec.directory / STATUS_FILE, record)
    return record


# -- results, statistics, report --------------------------------------------------------------------------------------


def results_frames(records: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``results.csv`` (a row per run) and ``curves.csv`` (a row per run and epoch) from the runs' records."""
    columns = ["arm", "seed", "status", *(m.name for m in METRICS), "epochs", "attempts", "run_dir", "wandb_run"]
    rows = [{column: record.get(column) for column in columns} for record in records]
    results = pd.DataFrame(rows, columns=columns)
    curve_rows = [
        {"arm": record["arm"], "seed": record["seed"], **row}
        for record in records
        if record.get("status") == "finished"
        for row in record.get("curves", [])
    ]
    curves = pd.DataFrame(curve_rows, columns=["arm", "seed", "epoch", *CURVE_COLUMNS])
    return results, curves


def _values_by_seed(results: pd.DataFrame, arm: str, metric: str) -> dict[int, float]:
    rows = results[(results["arm"] == arm) & (results["status"] == "finished")]
    return {int(seed): float(value) for seed, value in zip(rows["seed"], rows[metric], strict=True) if pd.notna(value)}


def comparison_pairs(arms: Sequence[str]) -> list[tuple[str, str]]:
    """``(arm, reference)`` pairs: pruned vs unpruned, each baseline vs unpruned, pruned vs each baseline.

    Example:
        >>> comparison_pairs(["unpruned", "pruned", "gmp"])
        [('pruned', 'unpruned'), ('gmp', 'unpruned'), ('pruned', 'gmp')]
    """
    baselines = [arm for arm in arms if arm not in (UNPRUNED, PRUNED)]
    return [(PRUNED, UNPRUNED), *((b, UNPRUNED) for b in baselines), *((PRUNED, b) for b in baselines)]


def summarize(results: pd.DataFrame, arms: Sequence[str]) -> dict[str, Any]:
    """Per-arm descriptions and pairwise tests of every metric (the statistics part of ``summary.json``)."""
    per_arm = {
        arm: {m.name: describe(list(_values_by_seed(results, arm, m.name).values())) for m in METRICS} for arm in arms
    }
    tests = [
        {
            "arm": arm,
            "reference": reference,
            "metrics": {
                m.name: compare_arms(_values_by_seed(results, reference, m.name), _values_by_seed(results, arm, m.name))
                for m in METRICS
            },
        }
        for arm, reference in comparison_pairs(arms)
    ]
    return {"per_arm": per_arm, "comparisons": tests}


def _interval_text(metric: Metric, described: dict[str, Any]) -> str:
    if described["mean"] is None:
        return "no finished run"
    mean = metric.show(described["mean"])
    if described["t_ci"] is None:
        return f"{mean} (n=1, no CI)"
    half = (described["t_ci"][1] - described["t_ci"][0]) / 2
    low, high = described["bootstrap_ci"]
    return f"{mean} ± {metric.show(half)} [{metric.show(low)}, {metric.show(high)}]"


def arm_table(summary: dict[str, Any]) -> pd.DataFrame:
    """Mean ± t-based 95% CI half-width [bootstrap 95% CI] of every metric (rows) for every arm (columns)."""
    arms = list(summary["arms"])
    rows = {m.title: [_interval_text(m, summary["per_arm"][arm][m.name]) for arm in arms] for m in METRICS}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=arms)
    table.index.name = "metric"
    return table


def _p_text(result: dict[str, Any]) -> str:
    """The p-value, or why there is none, short enough for a table cell."""
    if result["p_value"] is not None:
        return f"{result['p_value']:.3g}"
    return "no test (n < 2)" if "fewer than 2" in result["note"] else "no test (no variance)"


def significance_table(comparison: dict[str, Any]) -> pd.DataFrame:
    """One comparison's tests: means, difference, paired t (primary), Welch t, Mann-Whitney U p-values, Cohen's d."""
    rows = {}
    for metric in METRICS:
        result = comparison["metrics"][metric.name]
        d = result["cohens_d"]
        rows[metric.title] = {
            comparison["reference"]: metric.show(result["mean_reference"]),
            comparison["arm"]: metric.show(result["mean_other"]),
            "difference": metric.show(result["difference"]),
            "paired t p (primary)": _p_text(result["paired_t"]),
            "Welch t p": _p_text(result["welch_t"]),
            "Mann-Whitney U p": _p_text(result["mann_whitney_u"]),
            "Cohen's d": f"{d['statistic']:.2f}" if d["statistic"] is not None else "n/a",
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "metric"
    return table


def markdown_table(table: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table (pandas' own needs the optional ``tabulate``)."""
    header = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        lines.append("| " + " | ".join([str(index), *map(str, row.tolist())]) + " |")
    return "\n".join(lines)


def _mean(summary: dict[str, Any], arm: str, metric: str) -> float | None:
    return summary["per_arm"].get(arm, {}).get(metric, {}).get("mean")


def arm_reading(summary: dict[str, Any]) -> str:
    """One sentence on the per-arm table: accuracy, sparsity and effective FLOPs of every arm."""
    acc, sparsity = METRIC_BY_NAME["test_acc"], METRIC_BY_NAME["sparsity"]
    parts = []
    for arm in summary["arms"]:
        if _mean(summary, arm, "test_acc") is None:
            parts.append(f"{arm} has no finished run")
            continue
        text = f"{arm} {acc.show(_mean(summary, arm, 'test_acc'))}%"
        text += f" at {sparsity.show(_mean(summary, arm, 'sparsity'))}%"
        dense = _mean(summary, UNPRUNED, "flops_effective")
        flops = _mean(summary, arm, "flops_effective")
        if arm != UNPRUNED and dense and flops is not None:
            text += f" sparsity ({flops / dense:.0%} of the unpruned effective FLOPs)"
        else:
            text += " sparsity"
        parts.append(text)
    return "Mean test accuracy: " + "; ".join(parts) + "."


def accuracy_table(summary: dict[str, Any]) -> pd.DataFrame:
    """Test accuracy of every pair in one table: the difference, its paired 95% CI and the tests."""
    acc, sparsity = METRIC_BY_NAME["test_acc"], METRIC_BY_NAME["sparsity"]
    rows = []
    for comparison in summary["comparisons"]:
        result = comparison["metrics"]["test_acc"]
        interval = result.get("paired_difference_t_ci")
        d = result["cohens_d"]["statistic"]
        rows.append({
            "arm vs reference": f"{comparison['arm']} vs {comparison['reference']}",
            "sparsity (%)": f"{sparsity.show(comparison['metrics']['sparsity']['mean_other'])} vs "
            f"{sparsity.show(comparison['metrics']['sparsity']['mean_reference'])}",
            "difference (points)": acc.show(result["difference"]),
            "paired 95% CI": "n/a" if interval is None else f"[{acc.show(interval[0])}, {acc.show(interval[1])}]",
            "paired t p (primary)": _p_text(result["paired_t"]),
            "Welch t p": _p_text(result["welch_t"]),
            "Mann-Whitney U p": _p_text(result["mann_whitney_u"]),
            "Cohen's d": f"{d:.2f}" if d is not None else "n/a",
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("arm vs reference")


def significance_reading(comparison: dict[str, Any]) -> str:
    """One sentence on a tests table: the primary (paired) test of test accuracy, and the sparsity reached."""
    arm, reference = comparison["arm"], comparison["reference"]
    result = comparison["metrics"]["test_acc"]
    if result["difference"] is None:
        return f"{arm} vs {reference}: no finished runs to compare."
    change = result["difference"] * 100
    paired = result["paired_t"]
    if paired["p_value"] is None:
        verdict = paired["note"]
    else:
        significant = "significant" if paired["p_value"] < ALPHA else "not significant"
        verdict = f"paired t-test p = {paired['p_value']:.3g}, {significant} at alpha = {ALPHA}"
    sparsity, shown = comparison["metrics"]["sparsity"], METRIC_BY_NAME["sparsity"].show
    seeds = f"{result['n_pairs']} paired seed{'' if result['n_pairs'] == 1 else 's'}"
    return (
        f"Over {seeds}, {arm} changes test accuracy by {change:+.2f} percentage points against {reference} "
        f"({verdict}), at {shown(sparsity['mean_other'])}% sparsity versus {shown(sparsity['mean_reference'])}%."
    )


# -- plots -------------------------------------------------------------------------------------------------------------

MARKERS = ("o", "s", "^", "D", "v", "P")
LINESTYLES = ("-", "--", "-.", ":")


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)  # the Agg canvas: no pyplot, no GUI backend, safe in any process
    return figure


def plot_accuracy_vs_sparsity(results: pd.DataFrame) -> Figure:
    """Test accuracy against final sparsity, one point per run, one marker per arm."""
    figure = _figure(6.5, 4.5)
    axes = figure.add_subplot()
    finished = results[results["status"] == "finished"]
    for index, (arm, rows) in enumerate(finished.groupby("arm", sort=False)):
        axes.scatter(rows["sparsity"] * 100, rows["test_acc"] * 100, marker=MARKERS[index % len(MARKERS)], s=50,
                     label=f"{arm} ({len(rows)} runs)", alpha=0.8)  # fmt: skip
    axes.set(title="Test accuracy vs final sparsity (one point per run)",
             xlabel="final sparsity of prunable weights (%)", ylabel="test accuracy (%)")  # fmt: skip
    _legend(axes)
    axes.grid(alpha=0.3)
    return figure


def _legend(axes: Any) -> None:
    if axes.get_legend_handles_labels()[0]:
        axes.legend()
    else:
        axes.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=axes.transAxes)


def _curve_panel(axes: Any, curves: pd.DataFrame, column: str, scale: float = 1.0) -> None:
    """Every run thin, each arm's mean over seeds thick, same colour per arm."""
    for index, (arm, rows) in enumerate(curves.groupby("arm", sort=False)):
        rows = rows.dropna(subset=[column])
        if rows.empty:
            continue
        color = f"C{index}"
        for _, run in rows.groupby("seed"):
            axes.plot(run["epoch"], run[column] * scale, color=color, alpha=0.25, linewidth=1)
        mean = rows.groupby("epoch")[column].mean() * scale
        # distinct line styles too: arms that prune to the same schedule draw the same curve
        axes.plot(mean.index, mean.values, color=color, linewidth=2.2, marker=MARKERS[index % len(MARKERS)],
                  linestyle=LINESTYLES[index % len(LINESTYLES)], label=f"{arm} (mean of seeds)")  # fmt: skip
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    _legend(axes)


def plot_sparsity_and_ratio(curves: pd.DataFrame) -> Figure:
    """Sparsity per epoch for every arm, and the adaptive ratio per epoch for the arms that have one."""
    figure = _figure(11, 4.2)
    left, right = figure.subplots(1, 2)
    _curve_panel(left, curves, "sparsity", 100)
    left.set(title="Sparsity at the end of each epoch", xlabel="epoch", ylabel="sparsity of prunable weights (%)")
    _curve_panel(right, curves, "ratio", 100)
    right.set(title="Pruning ratio chosen each epoch (adaptive arm)", xlabel="epoch",
              ylabel="ratio (% of remaining weights)")  # fmt: skip
    return figure


def plot_losses(curves: pd.DataFrame) -> Figure:
    """Train loss, validation loss and validation accuracy per epoch, every arm."""
    figure = _figure(15, 4.2)
    panels = figure.subplots(1, 3)
    for axes, (column, title, label, scale) in zip(panels, [
        ("train_loss", "Training loss (epoch mean)", "cross-entropy loss", 1.0),
        ("val_loss", "Validation loss", "cross-entropy loss", 1.0),
        ("val_acc", "Validation accuracy", "accuracy (%)", 100.0),
    ], strict=True):  # fmt: skip
        _curve_panel(axes, curves, column, scale)
        axes.set(title=title, xlabel="epoch", ylabel=label)
    return figure


def plot_flops_latency(summary: dict[str, Any]) -> Figure:
    """Bars per arm: effective (and dense) FLOPs per sample, latency per test batch; whiskers are 95% t-CIs."""
    figure = _figure(11, 4.2)
    left, right = figure.subplots(1, 2)
    arms = [arm for arm in summary["arms"] if _mean(summary, arm, "flops_effective") is not None]
    x = np.arange(len(arms))
    for axes, names, title, label in (
        (left, ("flops_dense", "flops_effective"), "Compute per sample", "MFLOPs per sample (1 MAC = 1 FLOP)"),
        (right, ("latency_ms_per_batch",), "Latency per test batch (CPU, pinned threads)", "milliseconds per batch"),
    ):
        width = 0.8 / len(names)
        for offset, name in enumerate(names):
            metric = METRIC_BY_NAME[name]
            described = [summary["per_arm"][arm][name] for arm in arms]
            means = np.array([d["mean"] * metric.scale for d in described])
            errors = np.array([(d["t_ci"][1] - d["t_ci"][0]) / 2 * metric.scale if d["t_ci"] else 0.0
                               for d in described])  # fmt: skip
            axes.bar(x + (offset - (len(names) - 1) / 2) * width, means, width, yerr=errors, capsize=4,
                     label=metric.label, hatch="//" if name == "flops_dense" else None, alpha=0.85)  # fmt: skip
        axes.set_xticks(x, arms)
        axes.set(title=title, xlabel="arm", ylabel=label)
        axes.grid(axis="y", alpha=0.3)
        _legend(axes)
    return figure


PLOTS = {
    "accuracy_vs_sparsity.png": lambda results, curves, summary: plot_accuracy_vs_sparsity(results),
    "sparsity_ratio_per_epoch.png": lambda results, curves, summary: plot_sparsity_and_ratio(curves),
    "loss_curves.png": lambda results, curves, summary: plot_losses(curves),
    "flops_latency.png": lambda results, curves, summary: plot_flops_latency(summary),
}


def write_plots(output: Path, results: pd.DataFrame, curves: pd.DataFrame, summary: dict[str, Any]) -> list[Path]:
    paths = []
    for name, draw in PLOTS.items():
        path = output / name
        draw(results, curves, summary).savefig(path, dpi=120)
        paths.append(path)
    return paths


# -- outputs ----------------------------------------------------------------------------------------------------------


def load_results(output: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Read a comparison's ``results.csv``, ``curves.csv`` and ``summary.json`` (what the notebook starts from).

    Raises:
        FileNotFoundError: The folder holds no finished comparison output.
    """
    output = Path(output)
    missing = [name for name in ("results.csv", "curves.csv", "summary.json") if not (output / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{output} has no {', '.join(missing)}: run `lightning-prune compare --output {output}` first"
        )
    summary = json.loads((output / "summary.json").read_text())
    return pd.read_csv(output / "results.csv"), pd.read_csv(output / "curves.csv"), summary


def render_report(summary: dict[str, Any], results: pd.DataFrame, plots: Sequence[Path]) -> str:
    """``report.md``: how the comparison ran, the per-arm table, one tests table per pair, the plots."""
    counts = results["status"].value_counts().to_dict()
    lines = [
        f"# Comparison `{summary['group']}`",
        "",
        f"Command: `{' '.join(summary['command'])}`",
        "",
        f"Arms: {', '.join(summary['arms'])}. Seeds: {', '.join(map(str, summary['seeds']))}. "
        f"Runs: {', '.join(f'{n} {status}' for status, n in counts.items())}.",
        "",
        "## Per-arm results",
        "",
        "Mean ± half-width of the t-based 95% confidence interval [bootstrap 95% CI, percentile, "
        f"{BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}], over the finished runs.",
        "",
        markdown_table(arm_table(summary)),
        "",
        arm_reading(summary),
        "",
        "## Tests",
        "",
        f"The primary test is the **{PRIMARY_TEST}** over seeds: {PRIMARY_TEST_REASON}. Welch's t-test and the "
        "Mann-Whitney U test are reported as unpaired checks, Cohen's d (pooled standard deviation) as the effect "
        "size. Differences are arm minus reference; p-values are two-sided and not corrected for the "
        f'{len(METRICS)} metrics. "no test" marks a test the data cannot support: fewer than 2 seeds (n < 2), or no '
        "variance (a metric that is the same in every run, such as the dense parameter count).",
        "",
        "### Test accuracy, every pair",
        "",
        "The paired 95% CI is the t-based interval of the seed-by-seed differences (arm minus reference), in points.",
        "",
        markdown_table(accuracy_table(summary)),
        "",
    ]
    for comparison in summary["comparisons"]:
        lines += [
            f"### {comparison['arm']} vs {comparison['reference']}",
            "",
            markdown_table(significance_table(comparison)),
            "",
            significance_reading(comparison),
            "",
        ]
    lines += ["## Plots", ""]
    lines += [f"![{path.stem.replace('_', ' ')}]({path.name})\n" for path in plots]
    unfinished = results[results["status"] != "finished"]
    if len(unfinished):
        lines += ["## Runs that did not finish", "", "Re-run the same command to retry them.", ""]
        lines += [f"- {row.arm}, seed {row.seed}: {row.status} ({row.run_dir})" for row in unfinished.itertuples()]
        lines.append("")
    if summary.get("wandb"):
        lines += ["## Weights & Biases", "", f"Group `{summary['group']}`: {summary['wandb']}", ""]
    return "\n".join(lines)


def write_outputs(comparison: Comparison, records: Sequence[dict[str, Any]], log_wandb: bool = True) -> dict[str, Any]:
    """Write ``results.csv``, ``curves.csv``, the plots, ``summary.json`` and ``report.md``; with W&B, a summary run.

    Returns:
        The summary (what ``summary.json`` holds).
    """
    output = comparison.output
    results, curves = results_frames(records)
    results.to_csv(output / "results.csv", index=False)
    curves.to_csv(output / "curves.csv", index=False)
    arms = [arm.name for arm in comparison.arms]
    summary = {
        "group": comparison.group,
        "command": comparison.command,
        "created": _now(),
        "arms": arms,
        "seeds": comparison.seeds,
        "runs": results["status"].value_counts().to_dict(),
        "primary_test": {"name": PRIMARY_TEST, "reason": PRIMARY_TEST_REASON},
        "alpha": ALPHA,
        "confidence": CONFIDENCE,
        "metrics": {m.name: {"label": m.label, "unit": m.unit, "scale": m.scale} for m in METRICS},
        **summarize(results, arms),
        "wandb": None,
    }
    plots = write_plots(output, results, curves, summary)
    if comparison.wandb and log_wandb:
        summary["wandb"] = log_summary_run(comparison, summary, results, plots)
    _write_json(output / "summary.json", summary)
    (output / "report.md").write_text(render_report(summary, results, plots))
    return summary


def log_summary_run(
    comparison: Comparison, summary: dict[str, Any], results: pd.DataFrame, plots: Sequence[Path]
) -> str | None:
    """A W&B run of job type ``summary`` in the comparison's group: the tables (``wandb.Table``) and the plots.

    Returns:
        Where the run is (its URL online, its folder offline), or None when W&B failed (a warning says why).
    """
    import wandb

    choose_wandb_mode()  # offline rather than a prompt or a hang
    try:
        config = {"arms": summary["arms"], "seeds": summary["seeds"], "command": summary["command"]}
        run = wandb.init(project=comparison.project, group=comparison.group, job_type="summary",
                         name=f"{comparison.group}-summary", dir=str(comparison.output), config=config)  # fmt: skip
        tests = [
            significance_table(c).reset_index().assign(arm=c["arm"], reference=c["reference"])
            for c in summary["comparisons"]
        ]
        run.log(
            {
                "summary/arms": wandb.Table(dataframe=arm_table(summary).reset_index()),
                "summary/tests": wandb.Table(dataframe=pd.concat(tests) if tests else pd.DataFrame()),
                "summary/runs": wandb.Table(dataframe=results.astype(str)),
                **{f"plots/{path.stem}": wandb.Image(str(path)) for path in plots},
            }
        )
        where = run.url or str(Path(run.dir).parent)
        run.finish()
        return where
    except Exception as err:  # the report matters more than its copy in W&B
        warnings.warn(f"lightning-prune compare: could not log the summary run to W&B: {err}", stacklevel=2)
        return None


# -- command line -----------------------------------------------------------------------------------------------------

PASSED_THROUGH = "Any other option (--trainer.*, --data.*, --model.*, --optimizer.*, ...) goes to every arm."
RESERVED = ("--seed_everything", "--trainer.default_root_dir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-prune compare",
        description="Train the unpruned and the pruned arm (and optional baselines) with the same seeds, data and\n"
        "hyperparameters; test and profile the final models; compare them with statistical tests (paired t-test\n"
        "over seeds first); write OUTPUT/results.csv, curves.csv, summary.json, report.md and PNG plots.",
        epilog=f"{PASSED_THROUGH}\n--pruning.* options go to the pruned arm only.\n\nExample:\n"
        "  lightning-prune compare --config configs/mnist_cnn.yaml --prune-config configs/prune.yaml \\\n"
        "      --seeds 5 --output runs/mnist --baseline gmp --trainer.max_epochs 10\n\n"
        "Each run lives in OUTPUT/runs/<arm>-seed<k>/ with a status.json. Re-running the same command resumes:\n"
        "finished runs are skipped, crashed or interrupted ones run again.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --data.* and friends must not be mistaken for our options
    )
    parser.add_argument("--config", action="append", required=True, metavar="YAML",
                        help="task config(s) as for `lightning-prune fit`, for every arm; repeatable")  # fmt: skip
    parser.add_argument("--prune-config", required=True, metavar="YAML",
                        help="the pruning recipe added for the pruned arm, e.g. configs/prune.yaml")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=5, metavar="N", help="seeds 0..N-1 per arm (default: 5)")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="output folder, also the W&B group (default: runs/compare-<config name>)")  # fmt: skip
    parser.add_argument("--baseline", action="append", choices=BASELINES, default=[],
                        help="extra arm at the pruned arm's target sparsity and window: Lightning's ModelPruning "
                        "(uniform global L1) or gmp (cubic gradual magnitude); repeatable")  # fmt: skip
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=OPTIONS", type=_arm_option,
                        help="extra pruned arm: the pruned arm's configuration plus OPTIONS, e.g. "
                        "--arm 'structured=--pruning.mode=structured' or --arm 't95=--pruning.target_sparsity=0.95'; "
                        "repeatable")  # fmt: skip
    parser.add_argument("--no-wandb", action="store_true", help="log each run with a CSVLogger instead of W&B")
    parser.add_argument("--profile-threads", type=int, default=1, metavar="N",
                        help="CPU threads while timing the final model's latency (default: 1)")  # fmt: skip
    return parser


ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*")


def _arm_option(text: str) -> tuple[str, tuple[str, ...]]:
    """``NAME=OPTIONS`` of ``--arm``: the arm's name and its extra options, split like a shell would.

    Example:
        >>> _arm_option("structured=--pruning.mode structured --pruning.max_ratio=0.7")
        ('structured', ('--pruning.mode', 'structured', '--pruning.max_ratio=0.7'))
    """
    name, _, options = text.partition("=")
    if not ARM_NAME.fullmatch(name) or "-seed" in name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=OPTIONS with NAME made of letters, digits, _ and .")
    if name in (UNPRUNED, PRUNED, *BASELINES):
        raise argparse.ArgumentTypeError(f"{text!r}: {name!r} is a built-in arm; choose another name")
    split = tuple(shlex.split(options))
    if not split:
        raise argparse.ArgumentTypeError(f"{text!r}: no options after {name}=; an arm must differ from `pruned`")
    return name, split


class _ConfigOnly(LightningPruneCLI):
    """Parses (and validates) an arm's arguments without instantiating anything."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def parse_arm(args: Sequence[str]) -> Namespace:
    """An arm's full config as LightningCLI resolves it. Exits with code 2 and jsonargparse's message when invalid."""
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
    loggers = config.get("trainer.logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, Namespace) and str(logger.get("class_path", "")).endswith("WandbLogger"):
            init_args = logger.get("init_args") or Namespace()
            return init_args.get("project") or "lightning-prune"
    return None


def plan_comparison(parser: argparse.ArgumentParser, options: argparse.Namespace, overrides: list[str]) -> Comparison:
    """Check the options and the arms' configs, and plan the runs. Errors go through ``parser.error`` (exit 2)."""
    if options.seeds < 1:
        parser.error(f"argument --seeds: must be at least 1, got {options.seeds}")
    if options.profile_threads < 1:
        parser.error(f"argument --profile-threads: must be at least 1, got {options.profile_threads}")
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

    arms = [Arm(UNPRUNED, plain), Arm(PRUNED, pruned)]
    names = [name for name, _ in options.arm]
    if len(set(names)) < len(names):
        parser.error(f"argument --arm: each arm needs its own name, got {', '.join(names)}")
    for name, options_of_arm in options.arm:
        arm_args = (*pruned, *options_of_arm)
        if parse_arm(arm_args).get("pruning") is None:
            parser.error(f"argument --arm: {name} configures no `pruning:` callback")
        arms.append(Arm(name, arm_args))
    for baseline in dict.fromkeys(options.baseline):
        arms.append(Arm(baseline, plain, _baseline_amounts(parser, baseline, pruning_args, pruned_config)))
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
    return Comparison(
        output=output,
        seeds=list(range(options.seeds)),
        arms=arms,
        wandb=not options.no_wandb and project is not None,
        project=project or "lightning-prune",
        profile_threads=options.profile_threads,
        parameters=pruning_args.get("parameters"),
        exclude=pruning_args.get("exclude"),
        settings=settings,
    )


def _baseline_amounts(
    parser: argparse.ArgumentParser, baseline: str, pruning: Namespace, config: Namespace
) -> dict[int, float]:
    """The baseline's ModelPruning schedule: the pruned arm's target, over the pruned arm's pruning epochs."""
    target = pruning.get("target_sparsity")
    if target is None:
        parser.error(f"argument --baseline: {baseline} prunes to the pruned arm's target: set "
                     "`target_sparsity` in --prune-config or --pruning.target_sparsity")  # fmt: skip
    max_epochs = config.get("trainer.max_epochs")
    if max_epochs is None or max_epochs < 1:
        parser.error(f"argument --baseline: {baseline} spreads its pruning over epochs: set --trainer.max_epochs")
    epochs = pruning_epochs(max_epochs, pruning.get("start_epoch") or 0, pruning.get("end_epoch"),
                            pruning.get("interval") or 1, pruning.get("interval_unit") or "epoch")  # fmt: skip
    if not epochs:
        parser.error(f"argument --baseline: the pruned arm's window holds no pruning epoch for {baseline}")
    return baseline_schedule(baseline, target, epochs)


def _check_resume(parser: argparse.ArgumentParser, comparison: Comparison) -> None:
    """A folder holds one comparison: resuming with other settings would mix runs that differ by more than the arm."""
    path = comparison.output / SETTINGS_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != comparison.settings:
            keys = {*saved, *comparison.settings}
            changed = sorted(key for key in keys if saved.get(key) != comparison.settings.get(key))
            parser.error(f"argument --output: {comparison.output} holds a comparison with other settings "
                         f"({', '.join(changed)} differ); choose another --output or remove the folder")  # fmt: skip
    _write_json(path, comparison.settings)


def compare_main(argv: list[str]) -> None:
    """``lightning-prune compare``: see ``lightning-prune compare --help``.

    Raises:
        SystemExit: 2 for bad arguments, 1 when some runs crashed (their traceback is in their ``status.json``), 130
            when interrupted; re-running the command resumes.
    """
    parser = build_parser()
    options, overrides = parser.parse_known_args(argv)
    comparison = plan_comparison(parser, options, overrides)
    comparison.command = ["lightning-prune", "compare", *argv]
    comparison.output.mkdir(parents=True, exist_ok=True)
    _check_resume(parser, comparison)
    if comparison.wandb:
        choose_wandb_mode()
    _say(f"{len(comparison.arms)} arms x {len(comparison.seeds)} seeds into {comparison.output}")
    try:
        records = run_comparison(comparison)
    except KeyboardInterrupt:
        records = [read_status(spec.directory) for spec in comparison.specs()]
        write_outputs(comparison, [r for r in records if r is not None], log_wandb=False)
        _say("interrupted: re-run the same command to resume (finished runs are skipped)")
        raise SystemExit(130) from None
    write_outputs(comparison, records)
    _say(f"report: {comparison.output / 'report.md'}")
    crashed = [f"{r['arm']}-seed{r['seed']}" for r in records if r["status"] != "finished"]
    if crashed:
        _say(f"{len(crashed)} run(s) did not finish ({', '.join(crashed)}): see their status.json; re-run to retry")
        raise SystemExit(1)
