"""``lightning_prune.compare.stats`` and ``hypotheses``: every statistic against scipy or a hand computation (ties,
n = 1, 2, 3, zero variance, missing seeds), and modules that stay light."""

import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import special
from scipy import stats as scipy_stats

from lightning_prune.compare import hypotheses, stats
from lightning_prune.compare.results import ArmStats, Conclusion, NoTest, TestResult

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("lightning", "torch", "matplotlib", "wandb")


def two_sided_t_p(t: float, df: float) -> float:
    """P(|T| > t) for Student's t with df degrees of freedom: the regularised incomplete beta I_x(df/2, 1/2),
    x = df / (df + t^2)."""
    return special.betainc(df / 2, 0.5, df / (df + t * t))


def test_t_interval_matches_the_t_table():
    low, high = stats.t_interval([1.0, 2.0, 3.0])
    # mean 2, s = 1, n = 3, t_{0.975, 2} = 4.3027 (table value)
    assert (low + high) / 2 == pytest.approx(2.0)
    assert (high - low) / 2 == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    # 90%: t_{0.95, 2} = 2.9200 (table value)
    low, high = stats.t_interval([1.0, 2.0, 3.0], 0.90)
    assert (high - low) / 2 == pytest.approx(2.9200 / math.sqrt(3), abs=1e-4)
    assert stats.t_interval([4.0, 4.0]) == (4.0, 4.0)
    assert stats.t_interval([4.0]) is None


def test_welch_t_test_by_hand():
    # a: mean 2.5, var 5/3; b: mean 5, var 20/3; se^2 = 5/12 + 20/12 = 25/12
    result = stats.welch_t_test([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0])
    assert result.statistic == pytest.approx(2.5 / math.sqrt(25 / 12))  # = sqrt(3)
    # Welch-Satterthwaite: (25/12)^2 / ((5/12)^2/3 + (20/12)^2/3) = 1875/425
    assert result.df == pytest.approx(1875 / 425)
    assert result.p_value == pytest.approx(two_sided_t_p(math.sqrt(3), 1875 / 425))
    equal = stats.welch_t_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert (equal.statistic, equal.df) == (pytest.approx(3 / math.sqrt(2 / 3)), pytest.approx(4.0))
    # n = 2 a side: t = 2 / sqrt(0.5/2 + 0.5/2) = 2 sqrt(2), df = 2
    two = stats.welch_t_test([1.0, 2.0], [3.0, 4.0])
    assert (two.statistic, two.df) == (pytest.approx(2 * math.sqrt(2)), pytest.approx(2.0))
    assert two.p_value == pytest.approx(two_sided_t_p(2 * math.sqrt(2), 2))


def test_paired_t_test_by_hand():
    # differences 1, 2, 2: mean 5/3, sd sqrt(1/3), t = (5/3) / (sqrt(1/3)/sqrt(3)) = 5, df 2
    result = stats.paired_t_test({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 4.0, 2: 5.0})
    assert result.statistic == pytest.approx(5.0)
    assert result.df == 2
    # with 2 degrees of freedom P(|T| > t) = 1 - t / sqrt(t^2 + 2)
    assert result.p_value == pytest.approx(1 - 5 / math.sqrt(27))
    # pairs by seed, not by position: seed 3 has no partner and is left out
    shuffled = stats.paired_t_test({2: 3.0, 0: 1.0, 1: 2.0, 3: 9.0}, {0: 2.0, 1: 4.0, 2: 5.0})
    assert shuffled.p_value == pytest.approx(result.p_value)
    # n = 2: differences 1, 3: t = 2 / (sqrt(2) / sqrt(2)) = 2, df 1, p = 1 - 2 atan(2) / pi
    two = stats.paired_t_test({0: 0.0, 1: 0.0}, {0: 1.0, 1: 3.0})
    assert (two.statistic, two.df) == (pytest.approx(2.0), 1.0)
    assert two.p_value == pytest.approx(1 - 2 * math.atan(2) / math.pi)


def brute_force_mann_whitney(a: list[float], b: list[float]) -> float:
    """Two-sided permutation p of U_b with mid-ranks: every split of the pooled values into |a| and |b|, p = twice the
    smaller tail (as scipy's permutation_test), at most 1."""
    pooled = np.array(a + b)
    ranks = scipy_stats.rankdata(pooled)  # mid-ranks for ties

    def u_of(indices):
        return sum(ranks[list(indices)]) - len(b) * (len(b) + 1) / 2

    observed = u_of(range(len(a), len(pooled)))
    null = [u_of(split) for split in itertools.combinations(range(len(pooled)), len(b))]
    lower = sum(u <= observed + 1e-9 for u in null) / len(null)
    upper = sum(u >= observed - 1e-9 for u in null) / len(null)
    return min(1.0, 2 * min(lower, upper))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]),  # separated, no ties
        ([0.9860, 0.9861, 0.9862], [0.9870, 0.9870, 0.9871]),  # ties within an arm: scipy's default says 0.0765
        ([0.986, 0.986, 0.987], [0.987, 0.988, 0.989]),  # a tie across the arms
        ([1.0, 1.0, 2.0, 2.0], [2.0, 3.0, 3.0]),  # many ties, unequal sizes
        ([1.0, 2.0], [2.0, 3.0, 4.0]),  # n = 2
    ],
)
def test_mann_whitney_p_is_the_permutation_p_with_ties(a, b):
    result = stats.mann_whitney_u(a, b)
    assert result.p_value == pytest.approx(brute_force_mann_whitney(a, b))
    assert result.statistic == pytest.approx(scipy_stats.mannwhitneyu(b, a).statistic)
    assert result.method == "exact permutation"
    if len(a) == len(b) == 3:  # the exact floor of 3 seeds a side: 2 / C(6, 3)
        assert result.p_value >= 0.1 - 1e-12


def test_mann_whitney_without_ties_is_scipys_exact_test_and_never_the_normal_approximation():
    a, b = [0.91, 0.93, 0.95, 0.97], [0.92, 0.96, 0.98, 0.99]
    assert stats.mann_whitney_u(a, b).p_value == pytest.approx(scipy_stats.mannwhitneyu(b, a, method="exact").pvalue)
    tied = ([0.9860, 0.9861, 0.9862], [0.9870, 0.9870, 0.9871])
    assert scipy_stats.mannwhitneyu(tied[1], tied[0]).pvalue < 0.1  # the bug: below the exact floor
    assert stats.mann_whitney_u(*tied).p_value == pytest.approx(0.1)


def test_mann_whitney_monte_carlo_beyond_the_exact_limit():
    rng = np.random.default_rng(1)
    a, b = list(rng.normal(0, 1, 12)), list(rng.normal(1, 1, 12))  # C(24, 12) = 2.7 million splits
    result = stats.mann_whitney_u(a, b)
    assert result.method.startswith("Monte Carlo permutation")
    # no ties: the exact p is scipy's exact test, the Monte Carlo one is within its standard error of it
    exact = scipy_stats.mannwhitneyu(b, a, method="exact").pvalue
    standard_error = math.sqrt(exact * (1 - exact) / hypotheses.PERMUTATIONS)
    assert result.p_value == pytest.approx(exact, abs=4 * standard_error + 1e-4)
    assert result == stats.mann_whitney_u(a, b)  # reproducible


def test_cohens_d_pooled_and_dz_paired():
    assert stats.cohens_d([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]).statistic == pytest.approx(3.0)
    # pooled var = (3 * 5/3 + 3 * 20/3) / 6 = 25/6; d = 2.5 / sqrt(25/6) = sqrt(1.5)
    assert stats.cohens_d([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0]).statistic == pytest.approx(math.sqrt(1.5))
    assert stats.cohens_d([1.0, 2.0], [2.0, 3.0]).method == "pooled standard deviation"
    # d_z * sqrt(n) is the paired t statistic (scipy's ttest_rel)
    a, b = [0.90, 0.91, 0.93, 0.92], [0.91, 0.93, 0.93, 0.95]
    dz = stats.cohens_dz(np.subtract(b, a)).statistic
    assert dz * math.sqrt(4) == pytest.approx(scipy_stats.ttest_rel(b, a).statistic)
    # differences 1, 3: mean 2, sd sqrt(2)
    assert stats.cohens_dz([1.0, 3.0]).statistic == pytest.approx(2 / math.sqrt(2))
    assert stats.cohens_dz([1.0]).no_test is NoTest.TOO_FEW_SEEDS
    assert stats.cohens_dz([0.5, 0.5, 0.5]).no_test is NoTest.NO_VARIANCE


@pytest.mark.parametrize(
    "differences",
    [[0.0005, -0.0003, 0.0002], [0.004, 0.006], [0.0, 0.001, -0.002, 0.0005, 0.0015], [-0.003, -0.0025, -0.002]],
)
def test_tost_and_non_inferiority_against_scipy(differences):
    margin = 0.001  # 0.1 points
    d = np.asarray(differences)
    lower = scipy_stats.ttest_1samp(d, -margin, alternative="greater")
    upper = scipy_stats.ttest_1samp(d, margin, alternative="less")
    equivalence = stats.tost(d, margin)
    assert equivalence.p_value == pytest.approx(max(lower.pvalue, upper.pvalue))
    assert equivalence.df == len(d) - 1
    non_inferiority = stats.non_inferiority_test(d, margin)
    assert (non_inferiority.statistic, non_inferiority.p_value) == (
        pytest.approx(lower.statistic), pytest.approx(lower.pvalue)
    )  # fmt: skip
    # duality with the 90% interval: TOST rejects at 5% iff the interval lies inside (-M, M), non-inferiority iff
    # its low end lies above -M
    low, high = stats.t_interval(d, 0.90)
    assert (equivalence.p_value < 0.05) == (-margin < low and high < margin)
    assert (non_inferiority.p_value < 0.05) == (low > -margin)


def test_margin_tests_that_the_data_cannot_support():
    for test in (stats.tost, stats.non_inferiority_test):
        assert test([0.001], 0.001).no_test is NoTest.TOO_FEW_SEEDS  # n = 1
        assert test([0.001, 0.001, 0.001], 0.01).no_test is NoTest.NO_VARIANCE  # zero variance: no zero-width claim


def test_holm_against_its_definition():
    assert stats.holm([0.01, None, 0.04, 0.03]) == [pytest.approx(0.03), None, pytest.approx(0.06), pytest.approx(0.06)]
    assert stats.holm([0.5, 0.6]) == [pytest.approx(1.0), pytest.approx(1.0)]  # capped at 1
    assert stats.holm([]) == [] and stats.holm([None]) == [None]
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = list(rng.uniform(0, 0.2, size=int(rng.integers(1, 8))))
        order = np.argsort(p)
        m = len(p)
        # adjusted p of the k-th smallest: max over j <= k of min(1, (m - j) p_(j)), j from 0
        expected = {int(order[k]): max(min(1.0, (m - j) * p[order[j]]) for j in range(k + 1)) for k in range(m)}
        assert stats.holm(p) == [pytest.approx(expected[i]) for i in range(m)]


def test_describe_shows_the_bootstrap_only_from_10_seeds():
    nine, ten = list(np.linspace(0.90, 0.95, 9)), list(np.linspace(0.90, 0.95, 10))
    assert stats.describe(nine).bootstrap_ci is None and stats.describe(nine).t_ci is not None
    expected = scipy_stats.bootstrap((np.array(ten),), np.mean, method="percentile", n_resamples=9999,
                                     rng=np.random.default_rng(stats.BOOTSTRAP_SEED)).confidence_interval  # fmt: skip
    assert stats.describe(ten).bootstrap_ci == (pytest.approx(expected.low), pytest.approx(expected.high))
    assert stats.bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert stats.bootstrap_interval([0.5]) is None
    assert stats.describe([5.0, 5.0, 5.0]).varies is False and stats.describe([5.0, 6.0]).varies is True


def test_every_statistic_of_a_pair_uses_the_same_paired_seeds():
    # the reference has seeds 0-3, the arm 0, 2 and 4 (a NaN at seed 1): paired seeds are 0 and 2
    reference = {0: 0.90, 1: 0.80, 2: 0.92, 3: 0.99}
    other = {0: 0.91, 1: float("nan"), 2: 0.95, 4: 0.5}
    result = stats.compare_arms(reference, other)
    a, b = np.array([0.90, 0.92]), np.array([0.91, 0.95])
    assert (result.n_reference, result.n_other, result.n_pairs, result.seeds) == (4, 3, 2, [0, 2])
    assert (result.mean_reference, result.mean_other) == (pytest.approx(a.mean()), pytest.approx(b.mean()))
    # the difference is the mean paired difference, inside its own paired interval
    assert result.difference == pytest.approx(np.mean(b - a))
    low, high = result.paired_difference_t_ci
    assert low < result.difference < high
    assert result.welch_t.p_value == pytest.approx(scipy_stats.ttest_ind(b, a, equal_var=False).pvalue)
    assert result.paired_t.p_value == pytest.approx(scipy_stats.ttest_rel(b, a).pvalue)
    assert result.mann_whitney_u.p_value == pytest.approx(brute_force_mann_whitney(list(a), list(b)))
    assert result.cohens_d.statistic == pytest.approx(stats.cohens_d(a, b).statistic)
    assert result.cohens_dz.statistic == pytest.approx(np.mean(b - a) / np.std(b - a, ddof=1))


def test_structural_metrics_that_do_not_vary_get_values_only():
    unpruned, pruned = {0: 12.0, 1: 12.0, 2: 12.0}, {0: 2.6, 1: 2.9, 2: 2.4}
    flops = stats.compare_arms(unpruned, pruned, structural=True)
    for name in flops.TESTS:
        assert getattr(flops, name).no_test is NoTest.DETERMINISTIC, name
    assert flops.difference == pytest.approx(np.mean([2.6, 2.9, 2.4]) - 12)
    # both vary: tested
    assert stats.compare_arms({0: 6.6, 1: 6.7, 2: 6.5}, pruned, structural=True).paired_t.p_value is not None
    # an outcome (accuracy) is tested even when one arm happens to be the same in every run
    accuracy = stats.compare_arms({0: 0.28, 1: 0.28, 2: 0.28}, {0: 0.40, 1: 0.28, 2: 0.59})
    assert accuracy.paired_t.p_value is not None and accuracy.welch_t.p_value is not None


def test_all_equal_differences_get_no_interval_and_no_test():
    result = stats.compare_arms({0: 0.90, 1: 0.91}, {0: 0.91, 1: 0.92})
    assert result.paired_difference_t_ci is None
    assert result.paired_t.no_test is NoTest.NO_VARIANCE and result.cohens_dz.no_test is NoTest.NO_VARIANCE
    primary = stats.primary_analysis({0: 0.90, 1: 0.91}, {0: 0.91, 1: 0.92}, 0.001)
    assert primary.ci90 is None and primary.tost.no_test is NoTest.NO_VARIANCE


def test_no_test_is_possible_says_so_instead_of_nan():
    for result in (
        stats.welch_t_test([1.0], [2.0, 3.0]),
        stats.mann_whitney_u([1.0], [2.0, 3.0]),
        stats.paired_t_test({0: 1.0}, {0: 2.0}),
        stats.cohens_d([1.0], [2.0, 3.0]),
    ):
        assert result.p_value is None and "fewer than 2 seeds" in result.note
        assert result.no_test is NoTest.TOO_FEW_SEEDS
    for result in (
        stats.welch_t_test([1.0, 1.0], [2.0, 2.0]),
        stats.paired_t_test({0: 1.0, 1: 2.0}, {0: 2.0, 1: 3.0}),
        stats.mann_whitney_u([1.0, 1.0], [1.0, 1.0]),
        stats.cohens_d([1.0, 1.0], [2.0, 2.0]),
    ):
        assert result.p_value is None and result.statistic is None and result.no_test is NoTest.NO_VARIANCE
    assert stats.describe([0.9]) == ArmStats(n=1, mean=0.9, note="one seed: no interval")
    assert stats.describe([0.9]).to_json() == {"n": 1, "mean": 0.9, "std": None, "t_ci": None, "bootstrap_ci": None,
                                               "note": "one seed: no interval", "varies": True}  # fmt: skip
    assert stats.describe([float("nan")]).note == "no finished run"
    compared = stats.compare_arms({0: 0.5}, {0: 0.4})  # n = 1
    assert compared.difference == pytest.approx(-0.1) and compared.n_pairs == 1
    assert compared.paired_t.p_value is None and compared.paired_difference_t_ci is None
    nothing = stats.compare_arms({0: 0.5}, {1: 0.4})  # no seed in both
    assert nothing.n_pairs == 0 and nothing.difference is None and nothing.mean_reference is None


def test_conclusions_follow_the_holm_adjusted_tests():
    # three pairs: clearly worse, equivalent within 0.1 points, too noisy to say anything
    references = {s: 0.98 + 0.001 * s for s in range(5)}
    worse = {s: v - 0.01 + 0.0005 * (s % 2) for s, v in references.items()}
    same = {s: v + 0.0002 * (-1) ** s for s, v in references.items()}
    noisy = {s: v + 0.02 * (-1) ** s for s, v in references.items()}
    pairs = [(references, worse), (references, same), (references, noisy)]
    analyses = [stats.primary_analysis(r, o, 0.001) for r, o in pairs]
    tests = [stats.paired_t_test(r, o) for r, o in pairs]
    adjusted = stats.adjust_primary(analyses, tests)
    assert [a.p_holm for a in adjusted] == stats.holm([t.p_value for t in tests])
    assert [a.tost_p_holm for a in adjusted] == stats.holm([a.tost.p_value for a in analyses])
    assert all(a.holm_family == 3 for a in adjusted)
    assert [a.conclusions for a in adjusted] == [(Conclusion.WORSE,), (Conclusion.EQUIVALENT,),
                                                 (Conclusion.INCONCLUSIVE,)]  # fmt: skip
    # a large p never makes two arms equal; significant but small: worse, and not worse by more than the margin
    assert stats.conclude(0.0, 0.9, 0.4, 0.3, 0.05) == (Conclusion.INCONCLUSIVE,)
    assert stats.conclude(-0.0005, 0.01, 0.2, 0.01, 0.05) == (Conclusion.WORSE, Conclusion.NON_INFERIOR)
    assert stats.conclude(0.002, 0.01, 0.2, 0.001, 0.05) == (Conclusion.BETTER,)
    # with no test at all
    none = stats.adjust_primary([stats.primary_analysis({0: 0.9}, {0: 0.8}, 0.001)], [TestResult()])
    assert none[0].conclusions == (Conclusion.INCONCLUSIVE,) and none[0].holm_family == 0


def imports_in_a_fresh_process(code: str) -> list[str]:
    """The HEAVY modules loaded after running ``code`` in a fresh interpreter (through the real package)."""
    check = f"; import sys; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code + check],
        capture_output=True, text=True, check=False, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [name for name in result.stdout.strip().split(",") if name]


def test_stats_imports_neither_lightning_torch_matplotlib_nor_wandb():
    modules = ("stats", "hypotheses", "testset", "results", "provenance")
    assert imports_in_a_fresh_process("; ".join(f"import lightning_prune.compare.{m}" for m in modules)) == []


def test_bench_paired_imports_only_the_statistics():
    code = "import runpy; runpy.run_path('bench/paired.py')"  # its imports and functions, not main()
    assert imports_in_a_fresh_process(code) == []
