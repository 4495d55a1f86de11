"""``bench/guard_sweep.py``: the sweep's answer is its sparsest run within the allowed drop, seed by seed."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_the_guarded_run_is_held_to_the_sweeps_sparsest_run_within_the_drop(tmp_path):
    rows = []
    for seed, guarded in ((0, 0.885), (1, 0.85)):
        for arm, sparsity, acc in (("unpruned", 0.0, 0.985), ("gmp_0.5", 0.5, 0.986), ("gmp_0.9", 0.9, 0.982),
                                   ("gmp_0.95", 0.95, 0.978), ("pruned", guarded, 0.983)):  # fmt: skip
            rows.append({"arm": arm, "seed": seed, "status": "finished", "test_acc": acc, "sparsity": sparsity,
                         "train_time_s": 100.0})  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)

    script = [sys.executable, str(ROOT / "bench" / "guard_sweep.py"), str(tmp_path), "--max-drop", "0.5"]
    result = subprocess.run(
        script, capture_output=True, text=True, check=False, env={"PYTHONPATH": str(ROOT), "PATH": ""}
    )
    assert result.returncode == 0, result.stderr
    # gmp_0.95 lost 0.7 points: the sweep's answer is gmp_0.9
    assert "| 0 | 98.50 | gmp_0.9 (90%) | 98.20 | 88.50 | 98.30 | -1.50 | yes | 0.333 |" in result.stdout
    assert "| 1 | 98.50 | gmp_0.9 (90%) | 98.20 | 85.00 | 98.30 | -5.00 | no | 0.333 |" in result.stdout
    assert "in 1 of 2 seeds, at 1/3 of the sweep's optimizer steps" in result.stdout
