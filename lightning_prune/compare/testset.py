"""The uncertainty that comes from the test set itself: two runs of the same seed compared example by example.

Every run saves, per test example, whether it was classified correctly (``save_test_correct``: a packed bit array and
a hash of the targets, in ``test_correct.npz`` beside its ``status.json``). Two runs tested on the same examples in
the same order pair up example by example: McNemar's exact test on the examples only one of them gets right, and a
paired bootstrap over the test examples of the accuracy difference. Pure: numpy and scipy only.
"""

import hashlib
from pathlib import Path

import numpy as np
from scipy import stats

from lightning_prune.compare.results import NoTest, TestResult, TestSetComparison

TEST_CORRECT_FILE = "test_correct.npz"
EXAMPLE_BOOTSTRAP_RESAMPLES = 9999
EXAMPLE_BOOTSTRAP_SEED = 0


def targets_hash(targets: np.ndarray) -> str:
    """SHA-256 of the test targets in order (as int64): two runs with the same hash were tested on the same labels in
    the same order."""
    return hashlib.sha256(np.ascontiguousarray(targets, dtype=np.int64).tobytes()).hexdigest()


def save_test_correct(path: Path, correct: np.ndarray, targets: np.ndarray) -> None:
    """Write ``correct`` (one bool per test example) as a packed bit array, with the example count and the targets'
    hash: 1.25 kB per 10,000 examples."""
    correct = np.asarray(correct, dtype=bool)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(partial, correct=np.packbits(correct), n=np.int64(len(correct)),
                        targets_sha256=np.str_(targets_hash(targets)))  # fmt: skip
    partial.replace(path)


def load_test_correct(path: Path) -> tuple[np.ndarray, str] | None:
    """``(correct, targets_sha256)`` of a run's ``test_correct.npz``, None when the run has none."""
    if not path.is_file():
        return None
    with np.load(path) as saved:
        n = int(saved["n"])
        return np.unpackbits(saved["correct"], count=n).astype(bool), str(saved["targets_sha256"])


def _discordant(reference: np.ndarray, other: np.ndarray) -> tuple[int, int]:
    """``(only_other, only_reference)``: the examples only the arm, or only the reference, gets right."""
    return int(np.sum(other & ~reference)), int(np.sum(reference & ~other))


def mcnemar_exact(reference: np.ndarray, other: np.ndarray) -> TestResult:
    """McNemar's exact test (two-sided): of the ``b + c`` examples exactly one of the two models gets right, is the
    arm's share ``b`` Binomial(b + c, 1/2)? The statistic is ``b``.

    Example:
        >>> reference = np.array([True] * 5 + [False] * 1 + [True] * 4)
        >>> other = np.array([False] * 5 + [True] * 1 + [True] * 4)  # b = 1, c = 5: p = 2 * 7 / 64
        >>> r = mcnemar_exact(reference, other)
        >>> r.statistic, r.p_value
        (1.0, 0.21875)
    """
    only_other, only_reference = _discordant(np.asarray(reference, bool), np.asarray(other, bool))
    if only_other + only_reference == 0:
        return TestResult(note="no test possible: the two models classify every test example alike",
                          no_test=NoTest.NO_VARIANCE)  # fmt: skip
    result = stats.binomtest(only_other, only_other + only_reference, 0.5, alternative="two-sided")
    return TestResult(float(only_other), float(result.pvalue), method="exact binomial")


def example_bootstrap_interval(
    reference: np.ndarray,
    other: np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = EXAMPLE_BOOTSTRAP_RESAMPLES,
    seed: int = EXAMPLE_BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """Paired percentile bootstrap interval of ``accuracy(other) - accuracy(reference)`` over the test examples.

    Resampling examples with replacement and averaging ``other_correct - reference_correct`` (each -1, 0 or +1) is
    drawing the three counts from a multinomial: the same distribution, without materialising the resamples.

    Returns:
        ``(low, high)``, or None when the models classify every example alike (the difference is 0 on every
        resample: no interval to show).
    """
    reference, other = np.asarray(reference, bool), np.asarray(other, bool)
    n = len(reference)
    only_other, only_reference = _discordant(reference, other)
    if n == 0 or only_other + only_reference == 0:
        return None
    shares = [only_other / n, only_reference / n, (n - only_other - only_reference) / n]
    counts = np.random.default_rng(seed).multinomial(n, shares, size=n_resamples)
    differences = (counts[:, 0] - counts[:, 1]) / n
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    return float(low), float(high)


def compare_test_sets(
    seed: int, reference: tuple[np.ndarray, str] | None, other: tuple[np.ndarray, str] | None
) -> TestSetComparison:
    """Two runs of one seed (each ``load_test_correct``'s result, None when not recorded) over their test examples.

    Example:
        >>> ref = (np.array([True, True, False, False]), "h")
        >>> c = compare_test_sets(0, ref, (np.array([True, False, True, True]), "h"))
        >>> c.accuracy_reference, c.accuracy_other, c.only_other, c.only_reference
        (0.5, 0.75, 2, 1)
        >>> compare_test_sets(0, ref, (np.array([True, True, False, False]), "other")).mcnemar.note
        'no test possible: the two runs were tested on different targets'
    """
    if reference is None or other is None:
        missing = TestResult(note="no test possible: per-example test predictions not recorded",
                             no_test=NoTest.NOT_RECORDED)  # fmt: skip
        return TestSetComparison(seed, mcnemar=missing)
    (a, hash_a), (b, hash_b) = reference, other
    if len(a) != len(b) or hash_a != hash_b:
        different = TestResult(note="no test possible: the two runs were tested on different targets",
                               no_test=NoTest.NOT_RECORDED)  # fmt: skip
        return TestSetComparison(seed, mcnemar=different)
    only_other, only_reference = _discordant(a, b)
    return TestSetComparison(
        seed=seed,
        n_examples=len(a),
        accuracy_reference=float(np.mean(a)) if len(a) else None,
        accuracy_other=float(np.mean(b)) if len(b) else None,
        only_other=only_other,
        only_reference=only_reference,
        bootstrap_ci=example_bootstrap_interval(a, b),
        mcnemar=mcnemar_exact(a, b),
    )
