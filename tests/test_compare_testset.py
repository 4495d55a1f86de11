"""``lightning_prune.compare.testset``: two runs compared example by example, against scipy and hand computations."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from lightning_prune.compare import testset
from lightning_prune.compare.results import NoTest


def pair_of_runs(n: int, only_other: int, only_reference: int, both: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-example correctness of two runs with the given discordant and concordant-correct counts, shuffled."""
    reference = np.array([False] * only_other + [True] * only_reference + [True] * both, dtype=bool)
    other = np.array([True] * only_other + [False] * only_reference + [True] * both, dtype=bool)
    reference = np.concatenate([reference, np.zeros(n - len(reference), dtype=bool)])
    other = np.concatenate([other, np.zeros(n - len(other), dtype=bool)])
    order = np.random.default_rng(0).permutation(n)
    return reference[order], other[order]


def test_mcnemar_exact_is_the_binomial_test_of_the_discordant_examples():
    reference, other = pair_of_runs(100, only_other=1, only_reference=5, both=80)
    result = testset.mcnemar_exact(reference, other)
    # 6 discordant, 1 of them the arm's: p = 2 * (C(6,0) + C(6,1)) / 2^6 = 14 / 64
    assert (result.statistic, result.p_value) == (1.0, pytest.approx(14 / 64))
    reference, other = pair_of_runs(1000, only_other=40, only_reference=20, both=800)
    expected = scipy_stats.binomtest(40, 60, 0.5).pvalue
    assert testset.mcnemar_exact(reference, other).p_value == pytest.approx(expected)
    alike = testset.mcnemar_exact(reference, reference)
    assert alike.p_value is None and alike.no_test is NoTest.NO_VARIANCE


def test_example_bootstrap_matches_scipys_paired_bootstrap_and_the_normal_approximation():
    reference, other = pair_of_runs(2000, only_other=70, only_reference=40, both=1700)
    low, high = testset.example_bootstrap_interval(reference, other)
    difference = (70 - 40) / 2000
    assert low < difference < high

    # scipy resampling the examples themselves (another random stream: agreement to Monte Carlo error)
    def mean_difference(r, o, axis):
        return np.mean(o - r, axis=axis)

    scipy = scipy_stats.bootstrap((reference.astype(float), other.astype(float)), mean_difference, paired=True,
                                  vectorized=True, method="percentile", n_resamples=9999,
                                  rng=np.random.default_rng(1)).confidence_interval  # fmt: skip
    assert (low, high) == (pytest.approx(scipy.low, abs=0.002), pytest.approx(scipy.high, abs=0.002))
    # and the normal approximation: var of the mean difference = (b + c) / n^2 - (b - c)^2 / n^3
    se = math.sqrt((70 + 40) / 2000**2 - (70 - 40) ** 2 / 2000**3)
    assert (low, high) == (pytest.approx(difference - 1.96 * se, abs=0.002),
                           pytest.approx(difference + 1.96 * se, abs=0.002))  # fmt: skip
    assert testset.example_bootstrap_interval(reference, other) == (low, high)  # reproducible
    assert testset.example_bootstrap_interval(reference, reference) is None  # no zero-width interval


def test_test_correct_round_trips_as_packed_bits(tmp_path):
    correct = np.random.default_rng(0).random(10_001) < 0.9
    targets = np.random.default_rng(1).integers(0, 10, size=10_001)
    path = tmp_path / testset.TEST_CORRECT_FILE
    testset.save_test_correct(path, correct, targets)
    loaded, digest = testset.load_test_correct(path)
    assert loaded.dtype == bool and np.array_equal(loaded, correct)
    assert digest == testset.targets_hash(targets) != testset.targets_hash(targets[::-1])
    assert path.stat().st_size < 2_000  # 10,001 examples in about 1.25 kB of bits
    assert testset.load_test_correct(tmp_path / "missing.npz") is None


def test_compare_test_sets_per_seed():
    reference, other = pair_of_runs(50, only_other=6, only_reference=2, both=30)
    result = testset.compare_test_sets(3, (reference, "h"), (other, "h"))
    assert (result.seed, result.n_examples, result.only_other, result.only_reference) == (3, 50, 6, 2)
    assert result.accuracy_reference == pytest.approx(32 / 50) and result.accuracy_other == pytest.approx(36 / 50)
    assert result.difference == pytest.approx(4 / 50)
    assert result.mcnemar.p_value == pytest.approx(scipy_stats.binomtest(6, 8, 0.5).pvalue)
    assert result.bootstrap_ci == testset.example_bootstrap_interval(reference, other)
    assert testset.compare_test_sets(0, None, (other, "h")).mcnemar.no_test is NoTest.NOT_RECORDED
    assert testset.compare_test_sets(0, (reference, "h"), (other[:-1], "h")).mcnemar.no_test is NoTest.NOT_RECORDED
    assert testset.compare_test_sets(0, (reference, "h"), (other, "g")).difference is None
