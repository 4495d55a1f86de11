"""The statistics of a comparison: pure functions over numbers (numpy and scipy only), and the metrics they test.

Confidence intervals of a mean (Student t; percentile bootstrap from 10 seeds on), the description of one arm, and
``compare_arms``: every statistic of one metric between two arms, all on the seeds finished in both (the tests
themselves are in ``hypotheses``). ``primary_analysis`` and ``adjust_primary`` give the primary endpoint's tests
against a margin (TOST, non-inferiority), Holm-adjusted over the pairs of a report, and their conclusions.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import stats

from lightning_prune.compare.hypotheses import (
    cohens_d,
    cohens_dz,
    constant,
    finite,
    holm,
    mann_whitney_u,
    non_inferiority_test,
    paired_t_test,
    tost,
    welch_t_test,
)
from lightning_prune.compare.results import ArmStats, Conclusion, NoTest, PairComparison, PrimaryAnalysis, TestResult

__all__ = [
    "ALPHA", "BOOTSTRAP_MIN_SEEDS", "BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "CONFIDENCE", "DEFAULT_MARGINS",
    "EQUIVALENCE_CONFIDENCE", "OTHER_MARGIN",
    "METRICS", "METRIC_BY_NAME", "PRIMARY_METRIC", "PRIMARY_TEST", "PRIMARY_TEST_REASON", "Metric", "adjust_primary",
    "bootstrap_interval", "cohens_d", "cohens_dz", "compare_arms", "describe", "holm", "mann_whitney_u",
    "non_inferiority_test", "paired_t_test", "primary_analysis", "t_interval", "tost", "welch_t_test",
]  # fmt: skip

ALPHA = 0.05
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
# below this many seeds the percentile bootstrap undercovers badly (with 3 seeds it is exactly [min, max]): not shown
BOOTSTRAP_MIN_SEEDS = 10
# TOST and non-inferiority at alpha = 0.05 go with the two-sided 90% interval
EQUIVALENCE_CONFIDENCE = 1 - 2 * ALPHA
PRIMARY_METRIC = "test_acc"
# the equivalence / non-inferiority margin of test accuracy in points, by the DataModule's class name; other data
DEFAULT_MARGINS = {"MNISTDataModule": 0.1, "CIFAR10DataModule": 0.5, "IMDBDataModule": 0.5}
OTHER_MARGIN = 0.5
PRIMARY_TEST = "paired t-test"
PRIMARY_TEST_REASON = (
    "the same seed gives every arm the same initial weights and the same data order, so runs pair up by seed; the "
    "paired test removes the seed-to-seed variation shared by both arms and compares only the within-seed differences "
    "(Welch's t-test and Mann-Whitney U, secondary, ignore the pairing)"
)


@dataclass(frozen=True)
class Metric:
    """A per-run metric: its column in ``results.csv``, how it is shown (``value * scale`` in ``unit``), and whether it
    is ``structural``: a property of the pruned model (sparsity, parameters, FLOPs, sizes), fixed by the schedule in
    most arms, tested only where it varies by seed in both arms of a pair; the others (accuracy, loss, time) are
    outcomes of a stochastic run and always tested."""

    name: str
    label: str
    unit: str = ""
    scale: float = 1.0
    digits: int = 4
    structural: bool = False

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
    Metric("sparsity", "final sparsity of the prunable weights", "%", 100, 2, structural=True),
    Metric("params_total", "parameters", "M", 1e-6, 4, structural=True),
    Metric("params_nonzero", "non-zero parameters", "M", 1e-6, 4, structural=True),
    Metric("flops_dense", "dense FLOPs per sample", "MFLOPs", 1e-6, 3, structural=True),
    Metric("flops_effective", "effective FLOPs per sample", "MFLOPs", 1e-6, 3, structural=True),
    Metric("latency_ms_per_batch", "latency per test batch", "ms", 1, 2),
    Metric("state_dict_bytes", "model size, dense", "MB", 1e-6, 3, structural=True),
    Metric("sparse_bytes", "model size, sparse", "MB", 1e-6, 3, structural=True),
    Metric("train_time_s", "training wall time", "s", 1, 1),
)
METRIC_BY_NAME = {metric.name: metric for metric in METRICS}


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
    x = finite(values)
    if len(x) < 2:
        return None
    mean = float(np.mean(x))
    if constant(x):
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
    x = finite(values)
    if len(x) < 2:
        return None
    if constant(x):
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


def describe(values: Sequence[float], confidence: float = CONFIDENCE) -> ArmStats:
    """Mean, sample standard deviation and t-based confidence interval of one arm's metric; the percentile bootstrap
    interval too from ``BOOTSTRAP_MIN_SEEDS`` seeds on (below, it undercovers: None).

    Example:
        >>> d = describe([1.0, 2.0, 3.0])
        >>> d.n, d.mean, d.std, d.bootstrap_ci, d.varies
        (3, 2.0, 1.0, None, True)
        >>> describe([0.9]).note
        'one seed: no interval'
        >>> describe([5.0, 5.0]).varies
        False
    """
    x = finite(values)
    n = len(x)
    if n == 0:
        return ArmStats(0, note="no finished run")
    return ArmStats(
        n=n,
        mean=float(np.mean(x)),
        std=float(np.std(x, ddof=1)) if n > 1 else None,
        t_ci=t_interval(x, confidence),
        bootstrap_ci=bootstrap_interval(x, confidence) if n >= BOOTSTRAP_MIN_SEEDS else None,
        note="one seed: no interval" if n == 1 else "",
        varies=n < 2 or not constant(x),
    )


def _paired(reference: Mapping[Any, float], other: Mapping[Any, float]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The seeds both arms have a finite value for, and the two arms' values on them, in seed order."""
    seeds = [k for k in sorted(reference) if k in other and math.isfinite(reference[k]) and math.isfinite(other[k])]
    return seeds, np.array([reference[k] for k in seeds], dtype=float), np.array([other[k] for k in seeds], dtype=float)


def _deterministic(seeds: list[int], a: np.ndarray, b: np.ndarray) -> TestResult | None:
    """A structural metric the same in every paired run of one arm gets values, not tests (parameters, FLOPs of a
    fixed schedule): it does not vary by seed, there is nothing random to test."""
    if len(seeds) < 2:
        return None
    same = [name for name, values in (("the reference", a), ("the arm", b)) if constant(values)]
    if not same:
        return None
    return TestResult(note=f"values only: the same in every run of {' and '.join(same)}",
                      no_test=NoTest.DETERMINISTIC)  # fmt: skip


def compare_arms(
    reference: Mapping[Any, float], other: Mapping[Any, float], structural: bool = False
) -> PairComparison:
    """Every statistic of one metric between two arms, given as ``{seed: value}``, on the seeds both have (finished,
    finite): means, the mean paired difference (``other - reference``) and its t-interval, the paired t-test, d_z,
    and the secondary Welch t, Mann-Whitney U and pooled Cohen's d on those same seeds. A ``structural`` metric
    (``Metric.structural``) that is the same in every run of either arm gets no test (``NoTest.DETERMINISTIC``).

    Example:
        >>> c = compare_arms({0: 1.0, 1: 2.0, 2: 3.0, 3: 9.0}, {0: 2.0, 1: 4.0, 2: 5.0})  # seed 3: no partner
        >>> c.n_reference, c.n_pairs, c.seeds, round(c.difference, 4), round(c.paired_t.statistic, 1)
        (4, 3, [0, 1, 2], 1.6667, 5.0)
    """
    seeds, a, b = _paired(reference, other)
    differences = b - a
    paired_ref, paired_other = dict(zip(seeds, a, strict=True)), dict(zip(seeds, b, strict=True))
    no_test = _deterministic(seeds, a, b) if structural else None
    tests = {
        "paired_t": paired_t_test(paired_ref, paired_other),
        "welch_t": welch_t_test(a, b),
        "mann_whitney_u": mann_whitney_u(a, b),
        "cohens_d": cohens_d(a, b),
        "cohens_dz": cohens_dz(differences),
    }
    if no_test is not None:
        tests = dict.fromkeys(tests, no_test)
    return PairComparison(
        n_reference=len(finite(list(reference.values()))),
        n_other=len(finite(list(other.values()))),
        n_pairs=len(seeds),
        mean_reference=float(np.mean(a)) if seeds else None,
        mean_other=float(np.mean(b)) if seeds else None,
        difference=float(np.mean(differences)) if seeds else None,
        paired_difference_t_ci=None if constant(differences) else t_interval(differences),
        **tests,
        seeds=seeds,
    )


def primary_analysis(reference: Mapping[Any, float], other: Mapping[Any, float], margin: float) -> PrimaryAnalysis:
    """The margin-based tests of the primary endpoint on the paired seeds: TOST (equivalence within ``+-margin``),
    the non-inferiority test (not worse by more than ``margin``) and the 90% t-interval of the differences that goes
    with both. Holm's adjustment and the conclusions come later, over every pair (``adjust_primary``).

    Example:
        >>> p = primary_analysis({0: 0.90, 1: 0.91, 2: 0.92}, {0: 0.90, 1: 0.912, 2: 0.919}, margin=0.01)
        >>> p.n_pairs, round(p.tost.p_value, 4), round(p.non_inferiority.p_value, 4)  # t = -10.96 and 11.72, df 2
        (3, 0.0041, 0.0036)
    """
    seeds, a, b = _paired(reference, other)
    differences = b - a
    return PrimaryAnalysis(
        margin=margin,
        n_pairs=len(seeds),
        difference=float(np.mean(differences)) if seeds else None,
        ci90=None if constant(differences) else t_interval(differences, EQUIVALENCE_CONFIDENCE),
        tost=tost(differences, margin),
        non_inferiority=non_inferiority_test(differences, margin),
    )


def conclude(
    difference: float | None, p: float | None, tost_p: float | None, non_inferiority_p: float | None, alpha: float
) -> tuple[Conclusion, ...]:
    """What the (adjusted) p-values allow one to say: better or worse (two-sided paired test), equivalent within the
    margin (TOST), not worse by more than the margin (non-inferiority, when neither better nor equivalent says more);
    inconclusive when none rejects. A large p never makes two arms equal.

    Example:
        >>> [c.value for c in conclude(-0.002, 0.01, 0.2, 0.03, 0.05)]
        ['worse', 'non_inferior']
        >>> [c.value for c in conclude(0.0001, 0.8, 0.3, 0.2, 0.05)]
        ['inconclusive']
    """
    found = []
    if p is not None and p < alpha and difference is not None and difference != 0:
        found.append(Conclusion.BETTER if difference > 0 else Conclusion.WORSE)
    if tost_p is not None and tost_p < alpha:
        found.append(Conclusion.EQUIVALENT)
    elif non_inferiority_p is not None and non_inferiority_p < alpha and Conclusion.BETTER not in found:
        found.append(Conclusion.NON_INFERIOR)
    return tuple(found) or (Conclusion.INCONCLUSIVE,)


def adjust_primary(
    analyses: Sequence[PrimaryAnalysis], paired_tests: Sequence[TestResult], alpha: float = ALPHA
) -> list[PrimaryAnalysis]:
    """Holm-adjust the pairs' primary p-values (the paired t-test, and TOST and non-inferiority each as a family of
    its own) over the pairs of a report, and draw each pair's conclusions from the adjusted values.

    Args:
        analyses: Each pair's ``primary_analysis``.
        paired_tests: Each pair's paired t-test of the primary metric, in the same order.
        alpha: The familywise error rate.
    """
    p = holm([test.p_value for test in paired_tests])
    tost_p = holm([a.tost.p_value for a in analyses])
    non_inferiority_p = holm([a.non_inferiority.p_value for a in analyses])
    family = sum(value is not None for value in p)
    return [
        replace(analysis, p_holm=p[i], tost_p_holm=tost_p[i], non_inferiority_p_holm=non_inferiority_p[i],
                holm_family=family,
                conclusions=conclude(analysis.difference, p[i], tost_p[i], non_inferiority_p[i], alpha))
        for i, analysis in enumerate(analyses)
    ]  # fmt: skip
