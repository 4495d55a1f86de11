"""The statistics of a comparison: pure functions over numbers (numpy and scipy only), and the metrics they test.

Confidence intervals of a mean (Student t, percentile bootstrap), the paired t-test (primary: runs pair up by seed),
Welch's t-test, the Mann-Whitney U test and Cohen's d. A test the data cannot support returns a ``TestResult`` whose
``no_test`` says why (``NoTest``) instead of a NaN.
"""

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from lightning_prune.compare.results import ArmStats, NoTest, PairComparison, TestResult

ALPHA = 0.05
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
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


def describe(values: Sequence[float], confidence: float = CONFIDENCE) -> ArmStats:
    """Mean, sample standard deviation, t-based and bootstrap confidence intervals of one arm's metric.

    Example:
        >>> d = describe([1.0, 2.0, 3.0])
        >>> d.n, d.mean, d.std, d.note
        (3, 2.0, 1.0, '')
        >>> describe([0.9]).note
        'one seed: no interval'
    """
    x = _finite(values)
    n = len(x)
    if n == 0:
        return ArmStats(0, note="no finished run")
    return ArmStats(
        n=n,
        mean=float(np.mean(x)),
        std=float(np.std(x, ddof=1)) if n > 1 else None,
        t_ci=t_interval(x, confidence),
        bootstrap_ci=bootstrap_interval(x, confidence),
        note="one seed: no interval" if n == 1 else "",
    )


def _too_few(*samples: np.ndarray) -> TestResult | None:
    if min(len(s) for s in samples) < 2:
        return TestResult(note="no test possible: fewer than 2 seeds", no_test=NoTest.TOO_FEW_SEEDS)
    return None


def welch_t_test(reference: Sequence[float], other: Sequence[float]) -> TestResult:
    """Welch's unequal-variance t-test of ``mean(other) - mean(reference)``, two-sided.

    Example:
        >>> r = welch_t_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])  # t = 3 / sqrt(1/3 + 1/3), df = 4
        >>> round(r.statistic, 4), round(r.df, 4), round(r.p_value, 4)
        (3.6742, 4.0, 0.0213)
    """
    a, b = _finite(reference), _finite(other)
    if (too_few := _too_few(a, b)) is not None:
        return too_few
    if _constant(a) and _constant(b):
        return TestResult(note="no test possible: zero variance in both arms", no_test=NoTest.NO_VARIANCE)
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
        return TestResult(note="no test possible: fewer than 2 seeds finished in both arms",
                          no_test=NoTest.TOO_FEW_SEEDS)  # fmt: skip
    if _constant(differences):
        return TestResult(note="no test possible: the paired differences have zero variance",
                          no_test=NoTest.NO_VARIANCE)  # fmt: skip
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
    if (too_few := _too_few(a, b)) is not None:
        return too_few
    if _constant(np.concatenate([a, b])):
        return TestResult(note="no test possible: every value is the same", no_test=NoTest.NO_VARIANCE)
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
        return TestResult(note="no effect size: fewer than 2 seeds", no_test=NoTest.TOO_FEW_SEEDS)
    pooled = math.sqrt(((len(a) - 1) * np.var(a, ddof=1) + (len(b) - 1) * np.var(b, ddof=1)) / (len(a) + len(b) - 2))
    if pooled == 0:
        return TestResult(note="no effect size: zero variance in both arms", no_test=NoTest.NO_VARIANCE)
    return TestResult(float((np.mean(b) - np.mean(a)) / pooled))


def compare_arms(reference: Mapping[Any, float], other: Mapping[Any, float]) -> PairComparison:
    """Every test of one metric between two arms, given as ``{seed: value}``: differences are ``other - reference``.

    Example:
        >>> c = compare_arms({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 4.0, 2: 5.0})
        >>> c.n_pairs, round(c.difference, 4), round(c.paired_t.statistic, 1)
        (3, 1.6667, 5.0)
    """
    a, b = _finite(list(reference.values())), _finite(list(other.values()))
    mean_a = float(np.mean(a)) if len(a) else None
    mean_b = float(np.mean(b)) if len(b) else None
    differences = _paired_differences(reference, other)
    return PairComparison(
        n_reference=len(a),
        n_other=len(b),
        n_pairs=len(differences),
        mean_reference=mean_a,
        mean_other=mean_b,
        difference=mean_b - mean_a if mean_a is not None and mean_b is not None else None,
        paired_difference_t_ci=t_interval(differences),
        paired_t=paired_t_test(reference, other),
        welch_t=welch_t_test(a, b),
        mann_whitney_u=mann_whitney_u(a, b),
        cohens_d=cohens_d(a, b),
    )
