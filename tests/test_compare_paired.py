"""``bench/paired.py``: two compare folders paired by seed, refusing runs of other code or task configs."""

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as scipy_stats

ROOT = Path(__file__).resolve().parents[1]
CODE = {"commit": "c0ffee", "dirty": False, "diff_hash": None, "task_hash": "t1"}


def write_folder(folder: Path, arm: str, accuracies: list[float], **provenance) -> None:
    folder.mkdir()
    rows = {"arm": arm, "seed": range(len(accuracies)), "status": "finished", "test_acc": accuracies,
            **(CODE | provenance)}  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)


def paired(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "paired.py"), *args],
        capture_output=True, text=True, check=False, env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )  # fmt: skip


def test_pairs_two_folders_by_seed_with_the_margin_tests(tmp_path):
    write_folder(tmp_path / "a", "gmp", [0.90, 0.92, 0.94])
    write_folder(tmp_path / "b", "pruned", [0.91, 0.94, 0.95, 0.5])
    result = paired(f"{tmp_path}/a:gmp", f"{tmp_path}/b:pruned", "--margin", "0.5")
    assert result.returncode == 0, result.stderr
    # seed 3 has no partner; differences 1, 2, 1 points: t = 4 with 2 df, p = 1 - 4 / sqrt(18)
    line = "seeds [0, 1, 2] (n = 3): 93.33 vs 92.00, difference 1.33, paired 95% CI [-0.10, 2.77], paired t p 0.0572"
    assert line in result.stdout and f"{1 - 4 / math.sqrt(18):.3g}" == "0.0572"
    assert "provenance: the same code and task config on both sides (commit c0ffee; task config hash t1)" in (
        result.stdout
    )
    # TOST at 0.5 points, against scipy's one-sided tests
    d = [0.01, 0.02, 0.01]
    tost = max(scipy_stats.ttest_1samp(d, -0.005, alternative="greater").pvalue,
               scipy_stats.ttest_1samp(d, 0.005, alternative="less").pvalue)  # fmt: skip
    assert "margin 0.5 points: 90% CI [" in result.stdout and f"TOST p {tost:.3g}" in result.stdout
    assert "(unadjusted): not worse by more than 0.5" in result.stdout


@pytest.mark.parametrize(
    ("change", "what"),
    [({"commit": "beef"}, "code (commit, dirty, diff hash)"), ({"task_hash": "t2"}, "task config hash"),
     ({"commit": None}, "not recorded")],
)  # fmt: skip
def test_refuses_runs_of_other_code_or_config_unless_told(tmp_path, change, what):
    write_folder(tmp_path / "a", "gmp", [0.90, 0.92, 0.94])
    write_folder(tmp_path / "b", "pruned", [0.91, 0.94, 0.95], **change)
    refused = paired(f"{tmp_path}/a:gmp", f"{tmp_path}/b:pruned")
    assert refused.returncode == 2 and "refusing to pair" in refused.stderr and what in refused.stderr
    assert "--allow-mixed" in refused.stderr and refused.stdout == ""
    allowed = paired(f"{tmp_path}/a:gmp", f"{tmp_path}/b:pruned", "--allow-mixed")
    assert allowed.returncode == 0, allowed.stderr
    assert "WARNING: paired although the runs differ (--allow-mixed)" in allowed.stdout and what in allowed.stdout
