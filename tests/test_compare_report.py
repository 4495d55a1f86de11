"""``lightning_prune.compare.report`` on made-up run records (no training): tables, report text, summary.json."""

import json
from dataclasses import replace

import pandas as pd
import pytest

from lightning_prune.compare.report import (
    accuracy_table,
    load_results,
    results_frames,
    significance_reading,
    significance_table,
    summarize,
    write_outputs,
)
from lightning_prune.compare.results import NoTest, Summary, TestResult
from lightning_prune.compare.runner import Arm, Comparison
from lightning_prune.compare.stats import METRICS

PNGS = ("accuracy_vs_sparsity.png", "sparsity_ratio_per_epoch.png", "loss_curves.png", "flops_latency.png")


def record(arm: str, seed: int, accuracy: float, sparsity: float, status: str = "finished") -> dict:
    """A run's status record: every metric, the same in every run but accuracy, sparsity and the non-zero count."""
    if status != "finished":
        return {"arm": arm, "seed": seed, "status": status, "attempts": 1, "run_dir": f"runs/{arm}-seed{seed}",
                "error": "Traceback\nRuntimeError: boom\n"}  # fmt: skip
    metrics = {m.name: 1.0 for m in METRICS} | {"test_acc": accuracy, "sparsity": sparsity,
                                                 "params_nonzero": 1e6 * (1 - sparsity)}  # fmt: skip
    ratio = 0.5 if arm == "pruned" else None
    curves = [{"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "val_loss": 1.0, "val_acc": accuracy,
               "sparsity": sparsity * epoch, "ratio": ratio} for epoch in (0, 1)]  # fmt: skip
    return {"arm": arm, "seed": seed, "status": "finished", "attempts": 1, "run_dir": f"runs/{arm}-seed{seed}",
            **metrics, "epochs": 2, "curves": curves}  # fmt: skip


# unpruned: 3 seeds; pruned: 3 seeds at a constant 0.5 sparsity; gmp: one seed finished, one crashed
RECORDS = [
    record("unpruned", 0, 0.90, 0.0), record("pruned", 0, 0.89, 0.5), record("gmp", 0, 0.88, 0.5),
    record("unpruned", 1, 0.92, 0.0), record("pruned", 1, 0.92, 0.5), record("gmp", 1, 0, 0, status="crashed"),
    record("unpruned", 2, 0.94, 0.0), record("pruned", 2, 0.92, 0.5),
]  # fmt: skip
ARMS = ["unpruned", "pruned", "gmp"]


@pytest.fixture(scope="module")
def summary() -> Summary:
    results, _ = results_frames(RECORDS)
    return summarize(results, ARMS, "made-up", ["lightning-prune", "compare"], [0, 1, 2])


def test_missing_tests_are_shown_by_why_they_are_missing(summary):
    table = accuracy_table(summary)
    assert table.loc["pruned vs unpruned", "paired t p (primary)"] != "no test (n < 2)"
    assert table.loc["gmp vs unpruned", "paired t p (primary)"] == "no test (n < 2)"
    assert table.loc["gmp vs unpruned", "Cohen's d"] == "n/a"
    tests = significance_table(summary.comparisons[0])
    assert tests.loc["parameters (M)", "paired t p (primary)"] == "no test (no variance)"
    assert tests.loc["final sparsity of the prunable weights (%)", "Welch t p"] == "no test (no variance)"
    # no_test decides, not the words of the note
    pair = summary.comparisons[0]
    misleading = TestResult(note="fewer than 2 words", no_test=NoTest.NO_VARIANCE)
    changed = replace(
        pair, metrics={**pair.metrics, "test_acc": replace(pair.metrics["test_acc"], paired_t=misleading)}
    )
    assert accuracy_table(replace(summary, comparisons=[changed])).iloc[0]["paired t p (primary)"] == (
        "no test (no variance)"
    )
    assert "(fewer than 2 words)" in significance_reading(changed)


def test_summary_json_round_trips_and_reads_files_without_no_test(summary):
    data = json.loads(json.dumps(summary.to_json()))
    assert list(data) == ["group", "command", "created", "arms", "seeds", "runs", "primary_test", "alpha",
                          "confidence", "metrics", "per_arm", "comparisons", "wandb"]  # fmt: skip
    assert list(data["comparisons"][0]["metrics"]["test_acc"]) == [
        "n_reference", "n_other", "n_pairs", "mean_reference", "mean_other", "difference", "paired_difference_t_ci",
        "paired_t", "welch_t", "mann_whitney_u", "cohens_d",
    ]  # fmt: skip
    assert Summary.from_json(data) == summary

    def without_no_test(value):
        if isinstance(value, dict):
            return {key: without_no_test(item) for key, item in value.items() if key != "no_test"}
        return [without_no_test(item) for item in value] if isinstance(value, list) else value

    # summary.json written before `no_test` existed: it comes back from the notes those versions wrote
    assert Summary.from_json(without_no_test(data)) == summary


def test_write_outputs_then_load_results(tmp_path):
    comparison = Comparison(output=tmp_path / "made-up", seeds=[0, 1, 2], arms=[Arm(arm, ()) for arm in ARMS],
                            wandb=False, project="p", command=["lightning-prune", "compare"])  # fmt: skip
    comparison.output.mkdir()
    with pytest.raises(FileNotFoundError, match=r"results\.csv, curves\.csv, summary\.json"):
        load_results(comparison.output)
    written = write_outputs(comparison, RECORDS)
    results, curves, summary = load_results(comparison.output)
    assert summary == written and summary.group == "made-up" and summary.runs == {"finished": 7, "crashed": 1}
    assert len(results) == 8 and len(curves) == 7 * 2
    report = (comparison.output / "report.md").read_text()
    for text in ("# Comparison `made-up`", "Runs: 7 finished, 1 crashed.", "### gmp vs unpruned",
                 "| gmp vs unpruned | 50.00 vs 0.00 | -4.00 | n/a | no test (n < 2) |", "- gmp, seed 1: crashed",
                 "Over 1 paired seed, gmp changes test accuracy by -4.00 percentage points against unpruned "
                 "(no test possible: fewer than 2 seeds finished in both arms)"):  # fmt: skip
        assert text in report, text
    for png in PNGS:
        assert f"]({png})" in report and (comparison.output / png).is_file()
    assert "Weights & Biases" not in report
    assert pd.read_csv(comparison.output / "results.csv")["status"].tolist().count("crashed") == 1
