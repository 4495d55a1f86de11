"""``bench/select_recipe.py``: a recipe is chosen on the last epoch's validation accuracy, never on test accuracy."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def select(folder: Path, *candidates: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "select_recipe.py"), str(folder), "--candidates", *candidates],
        capture_output=True, text=True, check=False, env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )  # fmt: skip


def test_the_best_final_validation_accuracy_wins_not_the_best_test_accuracy_or_an_earlier_epoch(tmp_path):
    # "early" leads after epoch 0 and "tested" on the test set; "steady" leads after the last epoch
    curves = [(arm, seed, epoch, acc) for seed in range(3)
              for arm, per_epoch in {"early": (0.99, 0.95), "steady": (0.90, 0.97), "tested": (0.90, 0.96)}.items()
              for epoch, acc in enumerate(per_epoch)]  # fmt: skip
    pd.DataFrame(curves, columns=["arm", "seed", "epoch", "val_acc"]).to_csv(tmp_path / "curves.csv", index=False)
    pd.DataFrame({"arm": ["tested"], "seed": [0], "test_acc": [0.999]}).to_csv(tmp_path / "results.csv", index=False)

    result = select(tmp_path, "early", "steady", "tested")
    assert result.returncode == 0, result.stderr
    assert "chosen on validation accuracy: steady (97.00%)" in result.stdout
    assert "| early | 3 | 1 | 95.00 |" in result.stdout


def test_a_candidate_without_validation_accuracy_names_itself(tmp_path):
    pd.DataFrame({"arm": ["a"], "seed": [0], "epoch": [0], "val_acc": [0.9]}).to_csv(tmp_path / "curves.csv")
    result = select(tmp_path, "a", "typo")
    assert result.returncode == 2
    assert "argument --candidates: no validation accuracy for typo" in result.stderr
