"""bench/gpu.sh, the prepared GPU run, runs end to end on the CPU with its smoke budget (2 batches, 1 epoch)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu.sh"


def run_smoke(data: Path, out: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPU_SH_SMOKE": "1", "PYTHON": sys.executable, "CIFAR10_DATA": str(data), "OUT": str(out),
           **extra}  # fmt: skip
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=170)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_gpu_sh_trains_the_four_arms_and_times_the_compact_export(tiny_cifar10, tmp_path):
    out = tmp_path / "out"
    done = run_smoke(tiny_cifar10, out)
    assert done.returncode == 0, done.stderr[-3000:]

    results = (out / "compare" / "results.csv").read_text().splitlines()
    finished = {line.split(",")[0] for line in results[1:] if line.split(",")[2] == "finished"}
    assert finished == {"unpruned", "pruned", "gmp_0.9", "flops"}
    export = json.loads((out / "export.json").read_text())
    for batch in ("batch64", "batch1"):
        # the flops arm's export has channels removed: fewer parameters and MACs than the unpruned model
        assert export[batch]["compact"]["flops_dense"] < export[batch]["dense"]["flops_dense"]
        assert export[batch]["compact"]["params_total"] < export[batch]["dense"]["params_total"]
        assert export[batch]["speedup"] > 0
    assert "commit: " in (out / "machine.txt").read_text()
    # it says what it wrote
    assert str(out / "export.json") in done.stdout and str(out / "compare" / "report.md") in done.stdout


@pytest.mark.timeout(60)
def test_gpu_sh_fails_fast_without_data(tmp_path):
    done = run_smoke(tmp_path / "missing", tmp_path / "out")
    assert done.returncode == 2
    assert "no CIFAR-10 data" in done.stderr
    assert not (tmp_path / "out").exists()
