"""The tests and effect sizes of two arms over seeds, pure (numpy and scipy only).

The primary test is the paired t-test of the seed-by-seed differences; with it come Cohen's d_z (its effect size), the
two one-sided tests of equivalence within a margin (TOST) and the one-sided non-inferiority test. Welch's t-test, the
Mann-Whitney U test (exact or Monte Carlo permutation p-value, ties included) and Cohen's d with the pooled standard
deviation are secondary. A test the data cannot support returns a ``TestResult`` whose ``no_test`` says why
(``NoTest``) instead of a NaN.
"""

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from lightning_prune.compare.results import NoTest, TestResult

# the Mann-Whitney p-value is exact (every split of the pooled values) up to this many splits, 8 seeds a side
# (12,870); above, it is a Monte Carlo permutation p-value over as many random splits (standard error below 0.004),
# reproducible by the seed. A report tests every metric of every pair: a pass over the splits must stay well under 1 s
PERMUTATIONS = 20_000
PERMUTATION_SEED = 0


def finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """The finite values as a float array (NaN and infinities dropped)."""
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]


def constant(values: np.ndarray) -> bool:
    """Whether every value is the same; equal to 9 significant digits counts as equal (float noise in a measured
    count is not variance to test)."""
    return len(values) > 0 and bool(np.ptp(values) <= 1e-9 * np.max(np.abs(values)))


def paired_differences(reference: Mapping[Any, float], other: Mapping[Any, float]) -> np.ndarray:
    """``other - reference`` for the keys (seeds) both have with finite values, in key order."""
    keys = [k for k in sorted(reference) if k in other]
    pairs = np.asarray([(reference[k], other[k]) for k in keys], dtype=float).reshape(-1, 2)
    pairs = pairs[np.isfinite(pairs).all(axis=1)]
    return pairs[:, 1] - pairs[:, 0]


def _too_few(*samples: np.ndarray) -> TestResult | None:
    if min(len(s) for s in samples) < 2:
        return TestResult(note="no test possible: fewer than 2 seeds", no_test=NoTest.TOO_FEW_SEEDS)
    return None


def _differences_untestable(differences: np.ndarray) -> TestResult | None:
    if len(differences) < 2:
        return TestResult(note="no test possible: fewer than 2 seeds finished in both arms",
                          no_test=NoTest.TOO_FEW_SEEDS)  # fmt: skip
    if constant(differences):
        return TestResult(note="no test possible: the paired differences have zero variance",
                          no_test=NoTest.NO_VARIANCE)  # fmt: skip
    return None


def welch_t_test(reference: Sequence[float], other: Sequence[float]) -> TestResult:
    """Welch's unequal-variance t-test of ``mean(other) - mean(reference)``, two-sided.

    Example:
        >>> r = welch_t_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])  # t = 3 / sqrt(1/3 + 1/3), df = 4
        >>> round(r.statistic, 4), round(r.df, 4), round(r.p_value, 4)
        (3.6742, 4.0, 0.0213)
    """
    a, b = finite(reference), finite(other)
    if (too_few := _too_few(a, b)) is not None:
        return too_few
    if constant(a) and constant(b):
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
    differences = paired_differences(reference, other)
    if (untestable := _differences_untestable(differences)) is not None:
        return untestable
    result = stats.ttest_1samp(differences, 0.0)
    return TestResult(float(result.statistic), float(result.pvalue), float(len(differences) - 1))


def mann_whitney_u(reference: Sequence[float], other: Sequence[float]) -> TestResult:
    """Mann-Whitney U test (two-sided), its p-value from the permutation distribution of U: exact (every split of the
    pooled values into the two groups) up to ``PERMUTATIONS`` splits, else Monte Carlo. Ties get mid-ranks and stay
    in the permutation distribution, so the p-value never falls below what the sample sizes allow (0.1 with 3 seeds a
    side), unlike the normal approximation scipy falls back to with ties. The statistic is U of ``other``.

    Example:
        >>> r = mann_whitney_u([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])  # fully separated: exact p = 2 / C(6, 3)
        >>> r.statistic, round(r.p_value, 4), r.method
        (9.0, 0.1, 'exact permutation')
        >>> round(mann_whitney_u([0.986, 0.986, 0.987], [0.987, 0.988, 0.989]).p_value, 4)  # a tie across arms
        0.2
    """
    a, b = finite(reference), finite(other)
    if (too_few := _too_few(a, b)) is not None:
        return too_few
    if constant(np.concatenate([a, b])):
        return TestResult(note="no test possible: every value is the same", no_test=NoTest.NO_VARIANCE)
    splits = math.comb(len(a) + len(b), len(a))
    method = stats.PermutationMethod(n_resamples=PERMUTATIONS, rng=np.random.default_rng(PERMUTATION_SEED))
    result = stats.mannwhitneyu(b, a, alternative="two-sided", method=method)
    how = "exact permutation" if splits <= PERMUTATIONS else f"Monte Carlo permutation, {PERMUTATIONS} splits"
    return TestResult(float(result.statistic), float(result.pvalue), method=how)


def cohens_d(reference: Sequence[float], other: Sequence[float]) -> TestResult:
    """Cohen's d of ``other - reference`` with the pooled (between-group) standard deviation; an effect size, no p.

    Example:
        >>> cohens_d([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]).statistic
        3.0
    """
    a, b = finite(reference), finite(other)
    if len(a) < 2 or len(b) < 2:
        return TestResult(note="no effect size: fewer than 2 seeds", no_test=NoTest.TOO_FEW_SEEDS)
    pooled = math.sqrt(((len(a) - 1) * np.var(a, ddof=1) + (len(b) - 1) * np.var(b, ddof=1)) / (len(a) + len(b) - 2))
    if pooled == 0:
        return TestResult(note="no effect size: zero variance in both arms", no_test=NoTest.NO_VARIANCE)
    return TestResult(float((np.mean(b) - np.mean(a)) / pooled), method="pooled standard deviation")


def cohens_dz(differences: Sequence[float]) -> TestResult:
    """Cohen's d_z of paired differences: their mean over their standard deviation, the effect size of the paired
    t-test (``t = d_z * sqrt(n)``).

    Example:
        >>> round(cohens_dz([1.0, 2.0, 2.0]).statistic, 4)  # mean 5/3, sd sqrt(1/3)
        2.8868
    """
    d = finite(differences)
    if len(d) < 2:
        return TestResult(note="no effect size: fewer than 2 seeds finished in both arms", no_test=NoTest.TOO_FEW_SEEDS)
    if constant(d):
        return TestResult(note="no effect size: the paired differences have zero variance", no_test=NoTest.NO_VARIANCE)
    return TestResult(float(np.mean(d) / np.std(d, ddof=1)), method="standard deviation of the paired differences")


def _one_sided(differences: np.ndarray, shift: float, alternative: str) -> tuple[float, float]:
    result = stats.ttest_1samp(differences, shift, alternative=alternative)
    return float(result.statistic), float(result.pvalue)


def non_inferiority_test(differences: Sequence[float], margin: float) -> TestResult:
    """One-sided paired t-test of non-inferiority: H0 ``mean(difference) <= -margin`` against ``> -margin`` (the arm
    is not worse than the reference by more than ``margin``). Rejecting at alpha is the same as the lower end of the
    ``1 - 2 alpha`` two-sided t-interval lying above ``-margin``.

    Example:
        >>> r = non_inferiority_test([0.0, 0.1, -0.1], 0.2)  # t = 0.2 / (0.1 / sqrt(3)), df 2
        >>> round(r.statistic, 4), round(r.p_value, 4)
        (3.4641, 0.0371)
    """
    d = finite(differences)
    if (untestable := _differences_untestable(d)) is not None:
        return untestable
    statistic, p_value = _one_sided(d, -margin, "greater")
    return TestResult(statistic, p_value, float(len(d) - 1), method=f"one-sided paired t, margin {margin:g}")


def tost(differences: Sequence[float], margin: float) -> TestResult:
    """Two one-sided paired t-tests of equivalence (Schuirmann's TOST): H0 ``|mean(difference)| >= margin``. The
    p-value is the larger of the two one-sided p-values (H0 ``mean <= -margin``, H0 ``mean >= margin``); the
    statistic is the t of that one. Rejecting at alpha is the same as the ``1 - 2 alpha`` two-sided t-interval lying
    inside ``(-margin, margin)``.

    Example:
        >>> r = tost([0.0, 0.1, -0.1], 0.2)  # both one-sided t are 3.4641 in size
        >>> round(r.p_value, 4)
        0.0371
    """
    d = finite(differences)
    if (untestable := _differences_untestable(d)) is not None:
        return untestable
    lower = _one_sided(d, -margin, "greater")
    upper = _one_sided(d, margin, "less")
    statistic, p_value = max(lower, upper, key=lambda result: result[1])
    return TestResult(statistic, p_value, float(len(d) - 1), method=f"two one-sided paired t, margin +-{margin:g}")


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values; None (no test) stays None and is not in the family.

    The i-th smallest of m p-values becomes ``max over j <= i of min(1, (m - j + 1) p_(j))``.

    Example:
        >>> holm([0.01, None, 0.04, 0.03])  # 3 tests: 3 * 0.01, then max(0.03, 2 * 0.03), then max(0.06, 0.04)
        [0.03, None, 0.06, 0.06]
    """
    order = sorted((p, index) for index, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[index] = running
    return adjusted
