"""``lightning-prune compare`` end to end on tiny MNIST: crashes and resume, extra arms, every output, W&B, notebook."""

import json
import re
import signal
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import wandb
from lightning.pytorch.callbacks import Callback
from nbclient import NotebookClient

from lightning_prune.cli import main
from lightning_prune.compare import provenance, runner
from lightning_prune.compare.stats import METRICS
from lightning_prune.compare.testset import load_test_correct

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
NOTEBOOK = ROOT / "notebooks" / "results.ipynb"
TINY = ["--data.val_size", "16", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1"]  # fmt: skip
PNGS = ("accuracy_vs_sparsity.png", "sparsity_ratio_per_epoch.png", "loss_curves.png", "flops_latency.png",
        "pareto.png")  # fmt: skip


def compare_args(data_dir: Path, output: Path, *extra: str) -> list[str]:
    return ["compare", "--config", str(CONFIGS / "mnist_cnn.yaml"), "--prune-config", str(CONFIGS / "prune.yaml"),
            "--output", str(output), "--data.data_dir", str(data_dir), *TINY, *extra]  # fmt: skip


@pytest.fixture(autouse=True)
def fresh_wandb():
    yield
    wandb.finish()
    # W&B's service process resolves relative paths against its own working directory: start a fresh one
    wandb.teardown()


class Interrupter(Callback):
    """Ctrl-C in the middle of a fit."""

    def on_train_epoch_start(self, trainer, pl_module):
        raise KeyboardInterrupt


def read_statuses(output: Path) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in (output / "runs").glob("*/status.json")}


def test_crashed_and_interrupted_runs_are_recorded_and_the_rerun_resumes(tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "resume"
    real = runner.train_and_test
    calls, failures = [], {"pruned-seed0": "crash", "unpruned-seed1": "interrupt"}

    def flaky(cli, spec):
        calls.append(spec.name)
        failure = failures.pop(spec.name, None)  # each fails once
        if failure == "crash":
            raise RuntimeError("boom")
        if failure == "interrupt":
            cli.trainer.callbacks.append(Interrupter())
        return real(cli, spec)

    monkeypatch.setattr(runner, "train_and_test", flaky)
    sigint = signal.getsignal(signal.SIGINT)

    with pytest.raises(SystemExit) as crashed:
        main(compare_args(tiny_mnist, output, "--seeds", "1", "--no-wandb"))
    assert crashed.value.code == 1
    assert calls == ["unpruned-seed0", "pruned-seed0"]
    statuses = read_statuses(output)
    assert statuses["unpruned-seed0"]["status"] == "finished"
    assert statuses["pruned-seed0"]["status"] == "crashed" and "RuntimeError: boom" in statuses["pruned-seed0"]["error"]
    results = pd.read_csv(output / "results.csv")
    assert results.set_index("arm")["status"].to_dict() == {"unpruned": "finished", "pruned": "crashed"}
    assert "Runs that did not finish" in (output / "report.md").read_text()

    # progress lines give accuracy and sparsity as percentages with two decimals
    assert re.search(r"unpruned, seed 0: finished in \d+s, test accuracy \d+\.\d\d%, sparsity 0\.00%",
                     capsys.readouterr().err)  # fmt: skip

    calls.clear()
    main(compare_args(tiny_mnist, output, "--seeds", "1", "--no-wandb"))
    assert calls == ["pruned-seed0"]  # the finished run is skipped
    assert read_statuses(output)["pruned-seed0"]["attempts"] == 2
    assert "finished earlier, skipped" in capsys.readouterr().err

    calls.clear()
    with pytest.raises(SystemExit) as interrupted:
        main(compare_args(tiny_mnist, output, "--seeds", "2", "--no-wandb"))
    assert interrupted.value.code == 130
    assert calls == ["unpruned-seed1"]  # the comparison stops at the interrupted run
    assert read_statuses(output)["unpruned-seed1"]["status"] == "interrupted"
    assert "pruned-seed1" not in read_statuses(output)
    assert signal.getsignal(signal.SIGINT) == sigint  # Ctrl-C works again after Lightning ignored it

    calls.clear()
    main(compare_args(tiny_mnist, output, "--seeds", "2", "--no-wandb"))
    assert calls == ["unpruned-seed1", "pruned-seed1"]
    assert {s["status"] for s in read_statuses(output).values()} == {"finished"}
    assert len(pd.read_csv(output / "results.csv")) == 4

    # the folder holds one comparison: other settings are refused rather than mixed in
    with pytest.raises(SystemExit) as refused:
        main(compare_args(tiny_mnist, output, "--seeds", "2", "--no-wandb", "--model.lr", "0.01"))
    assert refused.value.code == 2
    assert "--output" in capsys.readouterr().err

    # runs made by other code are stale: kept only with --reuse-stale, and the report lists them
    other_code = {"commit": "0" * 40, "dirty": False, "diff_hash": ""}
    monkeypatch.setattr(provenance, "code_state", lambda output=None: other_code)
    calls.clear()
    main(compare_args(tiny_mnist, output, "--seeds", "2", "--no-wandb", "--reuse-stale"))
    assert calls == [] and "reused (--reuse-stale)" in capsys.readouterr().err
    report = (output / "report.md").read_text()
    assert "### Reused runs" in report and f"- pruned, seed 1: commit {statuses['unpruned-seed0']['commit']}, now " in (
        report
    )
    assert pd.read_csv(output / "results.csv")["reused_stale"].str.startswith("commit ").all()
    failures.update(dict.fromkeys(["unpruned-seed0", "pruned-seed0", "unpruned-seed1", "pruned-seed1"], "crash"))
    with pytest.raises(SystemExit):
        main(compare_args(tiny_mnist, output, "--seeds", "2", "--no-wandb"))
    assert calls == ["unpruned-seed0", "pruned-seed0", "unpruned-seed1", "pruned-seed1"]  # every one runs again
    assert "finished earlier by other code or config (commit " in capsys.readouterr().err


@pytest.fixture(scope="module")
def comparison(tiny_mnist, tmp_path_factory) -> Path:
    """A 2-seed comparison of the unpruned, pruned and GMP arms, logging to W&B offline."""
    output = tmp_path_factory.mktemp("compare") / "tiny-mnist"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(output.parent)
        main(compare_args(tiny_mnist, output, "--seeds", "2", "--baseline", "gmp"))
    wandb.finish()
    wandb.teardown()
    return output


def test_extra_arms_are_the_pruned_arm_plus_their_options(tiny_mnist, tmp_path, capsys, comparison):
    output = tmp_path / "arms"
    arm = "t30=--pruning.target_sparsity 0.3 --pruning.normalize_per_layer=false"
    main(compare_args(tiny_mnist, output, "--seeds", "1", "--no-wandb", "--arm", arm, "--margin", "0.5"))
    results = pd.read_csv(output / "results.csv").set_index("arm")
    assert "The margin is **0.5 points** (--margin)" in (output / "report.md").read_text()
    # the same config and seed in another folder (and with another logger) hashes the same
    elsewhere = pd.read_csv(comparison / "results.csv").set_index(["arm", "seed"])
    for name in ("unpruned", "pruned"):
        assert results.loc[name, "config_hash"] == elsewhere.loc[(name, 0), "config_hash"]
    assert results.loc["t30", "config_hash"] != results.loc["pruned", "config_hash"]
    assert results["task_hash"].nunique() == 1  # t30 changes pruning only
    assert list(results.index) == ["unpruned", "pruned", "t30"]
    # one interval in the window: the pruned arm goes as far as prune.yaml's max_ratio 0.75 allows, t30 stops at its
    # own target
    assert results.loc["pruned", "sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert results.loc["t30", "sparsity"] == pytest.approx(0.3, abs=1e-3)
    config = next((output / "runs/t30-seed0").rglob("config.yaml")).read_text()
    assert "normalize_per_layer: false" in config and "target_sparsity: 0.3" in config
    summary = json.loads((output / "summary.json").read_text())
    pairs = [(c["arm"], c["reference"]) for c in summary["comparisons"]]
    assert pairs == [("pruned", "unpruned"), ("t30", "unpruned"), ("pruned", "t30")]
    # the arms are part of the comparison's settings: another arm in the same folder is refused
    with pytest.raises(SystemExit) as error:
        main(compare_args(tiny_mnist, output, "--seeds", "1", "--no-wandb", "--arm", "t4=--pruning.target_sparsity=.4"))
    assert error.value.code == 2 and "arms differ" in capsys.readouterr().err


def test_comparison_writes_results_curves_summary_report_and_plots(comparison):
    results = pd.read_csv(comparison / "results.csv")
    assert sorted(zip(results["arm"], results["seed"], strict=True)) == [
        ("gmp", 0), ("gmp", 1), ("pruned", 0), ("pruned", 1), ("unpruned", 0), ("unpruned", 1)
    ]  # fmt: skip
    assert set(results["status"]) == {"finished"}
    for metric in METRICS:
        assert results[metric.name].notna().all(), metric.name
    sparsity = results.groupby("arm")["sparsity"].mean()
    assert sparsity["unpruned"] == 0 and sparsity["pruned"] > 0
    assert sparsity["gmp"] == pytest.approx(0.9, abs=1e-3)  # prune.yaml's target, in the pruned arm's window
    assert (results["params_nonzero"] <= results["params_total"]).all()

    curves = pd.read_csv(comparison / "curves.csv")
    assert len(curves) == 6 * 2
    assert curves.loc[curves["arm"] == "pruned", "ratio"].notna().all()
    assert curves.loc[curves["arm"] != "pruned", "ratio"].isna().all()
    # the same seed means the same initial weights and data order: before any cut, every arm trains alike
    first = curves[curves["epoch"] == 0].pivot(index="seed", columns="arm", values="train_loss")
    assert first["pruned"].tolist() == pytest.approx(first["unpruned"].tolist())
    assert first["gmp"].tolist() == pytest.approx(first["unpruned"].tolist())

    # provenance of every run: commit, dirty tree, config hashes, versions
    state, versions = provenance.code_state(), provenance.versions()
    assert (results["commit"] == state["commit"]).all() and results["dirty"].map(type).eq(bool).all()
    assert results["config_hash"].str.fullmatch(r"[0-9a-f]{16}").all() and results["config_hash"].nunique() == 6
    assert results["task_hash"].nunique() == 1
    for column, version in versions.items():
        assert (results[column].astype(str) == version).all(), column
    # which test examples each run gets right, in a file of its own; their mean is the logged test accuracy
    for row in results.itertuples():
        correct, _ = load_test_correct(Path(row.run_dir) / "test_correct.npz")
        assert row.test_examples == len(correct) == 32
        assert np.mean(correct) == pytest.approx(row.test_acc, abs=1e-6)

    summary = json.loads((comparison / "summary.json").read_text())
    assert summary["arms"] == ["unpruned", "pruned", "gmp"]
    assert summary["primary_test"]["name"] == "paired t-test"
    assert (summary["margin"], summary["margin_source"]) == (0.1, "default for MNISTDataModule")
    pairs = [(c["arm"], c["reference"]) for c in summary["comparisons"]]
    assert pairs == [("pruned", "unpruned"), ("gmp", "unpruned"), ("pruned", "gmp")]
    accuracy = summary["per_arm"]["pruned"]["test_acc"]
    assert accuracy["n"] == 2 and len(accuracy["t_ci"]) == 2 and accuracy["bootstrap_ci"] is None  # 2 < 10 seeds
    test = summary["comparisons"][0]["metrics"]["test_acc"]
    assert test["n_pairs"] == 2 and test["seeds"] == [0, 1]
    assert all(k in test for k in ("paired_t", "welch_t", "mann_whitney_u", "cohens_d", "cohens_dz"))
    tested = [c for c in summary["comparisons"] if c["metrics"]["test_acc"]["paired_t"]["p_value"] is not None]
    assert {c["primary"]["holm_family"] for c in summary["comparisons"]} == {len(tested)}
    assert [len(c["test_set"]) for c in summary["comparisons"]] == [2, 2, 2]
    assert all(seed["n_examples"] == 32 for c in summary["comparisons"] for seed in c["test_set"])
    assert "NaN" not in (comparison / "summary.json").read_text()
    # why a test is missing is a field, not prose to parse: the parameter count is the same in every run
    assert summary["comparisons"][0]["metrics"]["params_total"]["paired_t"]["no_test"] == "deterministic"
    assert summary["comparisons"][0]["metrics"]["flops_effective"]["paired_t"]["no_test"] == "deterministic"

    report = (comparison / "report.md").read_text()
    for text in ("t-based 95% confidence interval", "Holm p (primary)", "TOST ±0.1 p (Holm)",
                 "non-inferiority 0.1 p (Holm)", "90% CI", "d_z", "Welch t p", "Mann-Whitney U p",
                 "Cohen's d (pooled)", "**0.1 points** (default for MNISTDataModule)", "seeds: paired (arm, ref)",
                 "| finished seeds | 2 of 2 | 2 of 2 | 2 of 2 |", "### Test-set uncertainty, per seed",
                 "McNemar exact p", "### pruned vs unpruned", "### gmp vs unpruned", "### pruned vs gmp",
                 "paired t-test", "## Test accuracy: primary analysis",
                 "| gmp vs unpruned | 2 (2, 2) | 90.00 vs 0.00 |",
                 "## Provenance", f"- code: commit `{state['commit']}`", "values only"):  # fmt: skip
        assert text in report, text
    assert " ± " in report and not re.search(r"\bnan\b", report.lower()) and "(n=2)" in report
    readings = [line for line in report.splitlines() if line.startswith(("Over ", "- Over "))]
    assert len(readings) == 6  # every pair's, in the primary section and under its own table
    for word in ("tie", "flat", "level with"):
        assert not any(word in line for line in readings), word
    for png in PNGS:
        assert (comparison / png).stat().st_size > 10_000, png
        assert f"]({png})" in report


def test_comparison_runs_are_grouped_in_wandb_with_arm_and_seed(comparison):
    for arm, seed in (("pruned", 0), ("gmp", 1)):
        run_file = next((comparison / f"runs/{arm}-seed{seed}/wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
        # protobuf keeps strings as plain text: the group, the run name and the config keys
        for text in (b"tiny-mnist", f"{arm}-seed{seed}".encode(), b"arm", b"seed"):
            assert text in run_file, text
    summary_run = next((comparison / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
    for text in (b"summary", b"summary/arms", b"summary/tests", b"plots/accuracy_vs_sparsity"):
        assert text in summary_run, text


def test_results_notebook_runs_on_a_comparison(comparison, monkeypatch, tmp_path):
    monkeypatch.setenv("LIGHTNING_PRUNE_RESULTS", str(comparison))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == len(PNGS)
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    for text in ("Holm p (primary)", "TOST", "seeds: paired (arm, ref)", "McNemar exact p", "finished seeds"):
        assert text in html, text
    assert "tiny-mnist" in "".join(o.get("text", "") for o in outputs)
