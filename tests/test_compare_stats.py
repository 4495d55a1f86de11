"""``lightning_prune.compare.stats``: statistics against hand-computed values, and a module that stays light."""

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from scipy import special

from lightning_prune.compare import stats
from lightning_prune.compare.results import ArmStats, NoTest

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
    # the interval of the differences: 5/3 +- t_{0.975, 2} * sqrt(1/3) / sqrt(3), t_{0.975, 2} = 4.302653
    low, high = stats.compare_arms({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 4.0, 2: 5.0}).paired_difference_t_ci
    half = 4.302653 * math.sqrt(1 / 3) / math.sqrt(3)
    assert (low, high) == (pytest.approx(5 / 3 - half, abs=1e-5), pytest.approx(5 / 3 + half, abs=1e-5))


def test_mann_whitney_u_and_cohens_d_by_hand():
    result = stats.mann_whitney_u([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    # every b above every a: U_b = 9; exact two-sided p = 2 / C(6, 3) = 0.1
    assert result.statistic == 9.0
    assert result.p_value == pytest.approx(0.1)
    assert stats.cohens_d([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]).statistic == pytest.approx(3.0)
    # pooled var = (3 * 5/3 + 3 * 20/3) / 6 = 25/6; d = 2.5 / sqrt(25/6) = sqrt(1.5)
    assert stats.cohens_d([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0]).statistic == pytest.approx(math.sqrt(1.5))


def test_bootstrap_interval_is_reproducible_and_sane():
    values = [0.91, 0.93, 0.92, 0.95, 0.90]
    low, high = stats.bootstrap_interval(values)
    assert (low, high) == stats.bootstrap_interval(values)  # fixed seed
    assert min(values) <= low < sum(values) / len(values) < high <= max(values)
    assert stats.bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert stats.bootstrap_interval([0.5]) is None


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
    assert "zero variance" in stats.welch_t_test([1.0, 1.0], [2.0, 2.0]).note
    assert "zero variance" in stats.paired_t_test({0: 1.0, 1: 2.0}, {0: 2.0, 1: 3.0}).note
    assert stats.welch_t_test([1.0, 2.0], [2.0, 4.0]).no_test is None
    assert stats.describe([0.9]) == ArmStats(n=1, mean=0.9, note="one seed: no interval")
    assert stats.describe([0.9]).to_json() == {"n": 1, "mean": 0.9, "std": None, "t_ci": None, "bootstrap_ci": None,
                                               "note": "one seed: no interval"}  # fmt: skip
    assert stats.describe([float("nan")]).note == "no finished run"
    compared = stats.compare_arms({0: 0.5}, {0: 0.4})
    assert compared.difference == pytest.approx(-0.1)
    assert compared.paired_t.p_value is None and compared.paired_t.note


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
    assert imports_in_a_fresh_process("import lightning_prune.compare.stats") == []


def test_bench_paired_imports_only_the_statistics():
    code = "import runpy; runpy.run_path('bench/paired.py')"  # its imports and functions, not main()
    assert imports_in_a_fresh_process(code) == []


def test_bench_paired_pairs_two_folders_by_seed(tmp_path):
    for folder, arm, accuracies in (("a", "gmp", [0.90, 0.92, 0.94]), ("b", "pruned", [0.91, 0.94, 0.95, 0.5])):
        (tmp_path / folder).mkdir()
        rows = {"arm": arm, "seed": range(len(accuracies)), "status": "finished", "test_acc": accuracies}
        pd.DataFrame(rows).to_csv(tmp_path / folder / "results.csv", index=False)
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "paired.py"), f"{tmp_path}/a:gmp", f"{tmp_path}/b:pruned"],
        capture_output=True, text=True, check=False, env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # seed 3 has no partner; differences 1, 2, 1 points: t = 4 with 2 df, p = 1 - 4 / sqrt(18)
    assert "seeds [0, 1, 2]: 93.33 vs 92.00, difference 1.33, paired 95% CI [-0.10, 2.77], paired t p 0.0572" in (
        result.stdout
    )
