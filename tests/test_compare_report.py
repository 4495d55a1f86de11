"""``lightning_prune.compare.report`` on made-up run records (no training): tables, report text, summary.json."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from lightning_prune.compare import stats
from lightning_prune.compare.report import (
    accuracy_table,
    examples_table,
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
from lightning_prune.compare.testset import TEST_CORRECT_FILE, save_test_correct

PNGS = ("accuracy_vs_sparsity.png", "sparsity_ratio_per_epoch.png", "loss_curves.png", "flops_latency.png",
        "pareto.png")  # fmt: skip
CODE = {"commit": "c0ffee", "dirty": False, "diff_hash": "", "config_hash": "h", "task_hash": "t",
        "torch_version": "2", "lightning_version": "2.6", "lightning_prune_version": "0.1"}  # fmt: skip


def record(arm: str, seed: int, accuracy: float, sparsity: float, status: str = "finished", **extra) -> dict:
    """A run's status record: every metric, the same in every run but accuracy, sparsity and the non-zero count."""
    if status != "finished":
        return {"arm": arm, "seed": seed, "status": status, "attempts": 1, "run_dir": f"runs/{arm}-seed{seed}",
                "error": "Traceback\nRuntimeError: boom\n", **CODE}  # fmt: skip
    metrics = {m.name: 1.0 for m in METRICS} | {"test_acc": accuracy, "sparsity": sparsity,
                                                 "params_nonzero": 1e6 * (1 - sparsity)}  # fmt: skip
    ratio = 0.5 if arm == "pruned" else None
    curves = [{"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "val_loss": 1.0, "val_acc": accuracy,
               "sparsity": sparsity * epoch, "ratio": ratio} for epoch in (0, 1)]  # fmt: skip
    return {"arm": arm, "seed": seed, "status": "finished", "attempts": 1, "run_dir": f"runs/{arm}-seed{seed}",
            **metrics, "epochs": 2, "curves": curves, **CODE, **extra}  # fmt: skip


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
    return summarize(results, ARMS, "made-up", ["lightning-prune", "compare"], [0, 1, 2], 0.5, "test")


def test_missing_tests_are_shown_by_why_they_are_missing(summary):
    table = accuracy_table(summary)
    assert table.loc["pruned vs unpruned", "paired t p"] != "no test (n < 2)"
    assert table.loc["gmp vs unpruned", "paired t p"] == "no test (n < 2)"
    assert table.loc["gmp vs unpruned", "paired 95% CI"] == "n/a (n < 2)"
    assert table.loc["gmp vs unpruned", "d_z"] == "n/a"
    assert table.loc["gmp vs unpruned", "conclusion"] == "inconclusive"
    # seed counts in every row: paired (arm, reference)
    assert table["seeds: paired (arm, ref)"].tolist() == ["3 (3, 3)", "1 (1, 3)", "1 (3, 1)"]
    tests = significance_table(summary.comparisons[0])
    # a structural metric the same in every run of an arm: values only, no test, no p-value
    assert tests.loc["parameters (M)", "paired t p"] == "values only"
    assert tests.loc["final sparsity of the prunable weights (%)", "Welch t p"] == "values only"
    assert tests.loc["test loss", "paired t p"] == "no test (no variance)"
    assert tests.loc["test loss", "paired 95% CI"] == "n/a (no variance)"  # no zero-width interval
    # no_test decides, not the words of the note
    pair = summary.comparisons[0]
    misleading = TestResult(note="fewer than 2 words", no_test=NoTest.NO_VARIANCE)
    changed = replace(
        pair, metrics={**pair.metrics, "test_acc": replace(pair.metrics["test_acc"], paired_t=misleading)}
    )
    assert accuracy_table(replace(summary, comparisons=[changed])).iloc[0]["paired t p"] == "no test (no variance)"
    assert "(fewer than 2 words)" not in significance_reading(changed)
    assert "fewer than 2 words, so it is inconclusive" in significance_reading(changed)


def test_the_primary_analysis_is_holm_adjusted_over_the_pairs():
    # five seeds, three arms, every pair testable
    accuracies = {"unpruned": [0.900, 0.910, 0.920, 0.905, 0.915], "pruned": [0.890, 0.905, 0.912, 0.899, 0.906],
                  "gmp": [0.901, 0.909, 0.921, 0.906, 0.914]}  # fmt: skip
    records = [record(arm, seed, acc, 0.5) for arm, values in accuracies.items() for seed, acc in enumerate(values)]
    results, _ = results_frames(records)
    made = summarize(results, ARMS, "g", [], list(range(5)), margin=0.5, margin_source="test")
    paired = [pair.metrics["test_acc"].paired_t.p_value for pair in made.comparisons]
    assert [pair.primary.p_holm for pair in made.comparisons] == stats.holm(paired)
    assert {pair.primary.holm_family for pair in made.comparisons} == {3}
    by_pair = {f"{p.arm} vs {p.reference}": p for p in made.comparisons}
    # gmp and unpruned differ by at most 0.1 points per seed: equivalent within 0.5 points
    assert by_pair["gmp vs unpruned"].primary.conclusions == (stats.Conclusion.EQUIVALENT,)
    assert by_pair["pruned vs unpruned"].primary.margin == pytest.approx(0.005)
    table = accuracy_table(made)
    assert table.loc["gmp vs unpruned", "conclusion"] == "equivalent within ±0.5"
    reading = significance_reading(by_pair["gmp vs unpruned"])
    assert "equivalent within ±0.5 points" in reading and "Holm-adjusted paired t p" in reading
    for word in ("tie", "flat", "level with"):
        assert word not in " ".join(significance_reading(p) for p in made.comparisons)


def test_summary_json_round_trips_and_reads_files_without_no_test(summary):
    data = json.loads(json.dumps(summary.to_json()))
    assert list(data) == ["group", "command", "created", "arms", "seeds", "runs", "finished", "primary_test", "alpha",
                          "confidence", "margin", "margin_source", "metrics", "per_arm", "comparisons", "provenance",
                          "reused_runs", "missing_values", "warnings", "wandb"]  # fmt: skip
    assert list(data["comparisons"][0]) == ["arm", "reference", "metrics", "primary", "test_set"]
    assert list(data["comparisons"][0]["metrics"]["test_acc"]) == [
        "n_reference", "n_other", "n_pairs", "seeds", "mean_reference", "mean_other", "difference",
        "paired_difference_t_ci", "paired_t", "welch_t", "mann_whitney_u", "cohens_d", "cohens_dz",
    ]  # fmt: skip
    assert Summary.from_json(data) == summary

    def without_no_test(value):
        if isinstance(value, dict):
            return {key: without_no_test(item) for key, item in value.items() if key != "no_test"}
        return [without_no_test(item) for item in value] if isinstance(value, list) else value

    # summary.json written before `no_test` existed: it comes back from the notes those versions wrote
    old = without_no_test(data)
    assert Summary.from_json(old).comparisons[1].metrics["test_acc"].paired_t.no_test is NoTest.TOO_FEW_SEEDS


def test_test_set_comparisons_come_from_the_runs_files(tmp_path):
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 10, size=200)
    records = []
    for seed in (0, 1):
        for arm, share in (("unpruned", 0.9), ("pruned", 0.8)):
            folder = tmp_path / f"{arm}-seed{seed}"
            folder.mkdir()
            correct = rng.random(200) < share
            save_test_correct(folder / TEST_CORRECT_FILE, correct, targets)
            records.append(record(arm, seed, float(correct.mean()), 0.5 if arm == "pruned" else 0.0,
                                  run_dir=str(folder), test_examples=200))  # fmt: skip
    results, _ = results_frames(records)
    made = summarize(results, ["unpruned", "pruned"], "g", [], [0, 1])
    seeds = made.comparisons[0].test_set
    assert [s.seed for s in seeds] == [0, 1] and all(s.n_examples == 200 for s in seeds)
    for s in seeds:
        accuracy = results.set_index(["arm", "seed"])["test_acc"]
        assert s.accuracy_other == pytest.approx(accuracy["pruned", s.seed])
        assert s.difference == pytest.approx(accuracy["pruned", s.seed] - accuracy["unpruned", s.seed])
        assert s.mcnemar.p_value is not None and s.bootstrap_ci[0] < s.difference < s.bootstrap_ci[1]
    table = examples_table(made)
    assert table["seed"].tolist() == [0, 1] and table["test examples"].tolist() == [200, 200]


def test_write_outputs_then_load_results(tmp_path):
    comparison = Comparison(output=tmp_path / "made-up", seeds=[0, 1, 2], arms=[Arm(arm, ()) for arm in ARMS],
                            wandb=False, project="p", command=["lightning-prune", "compare"], margin=0.1,
                            margin_source="default for MNISTDataModule")  # fmt: skip
    comparison.output.mkdir()
    with pytest.raises(FileNotFoundError, match=r"results\.csv, curves\.csv, summary\.json"):
        load_results(comparison.output)
    # a finished run without its latency, and one reused although made by other code
    records = [*RECORDS, record("gmp", 2, 0.91, 0.5, latency_ms_per_batch=float("nan"),
                                reused_stale="commit beef, now c0ffee")]  # fmt: skip
    written = write_outputs(comparison, records)
    results, curves, summary = load_results(comparison.output)
    assert summary == written and summary.group == "made-up" and summary.runs == {"finished": 8, "crashed": 1}
    assert summary.finished == {"unpruned": 3, "pruned": 3, "gmp": 2}
    assert summary.missing_values == [{"arm": "gmp", "seed": 2, "metrics": ["latency_ms_per_batch"]}]
    assert summary.reused_runs == [{"arm": "gmp", "seed": 2, "reasons": "commit beef, now c0ffee"}]
    assert len(results) == 9 and len(curves) == 8 * 2
    report = (comparison.output / "report.md").read_text()
    for text in ("# Comparison `made-up`", "Runs: 8 finished, 1 crashed.", "### gmp vs unpruned",
                 "Finished seeds per arm: unpruned 3, pruned 3, gmp 2",
                 "the arms have different numbers of finished seeds (unpruned 3, pruned 3, gmp 2)",
                 "| finished seeds | 3 of 3 | 3 of 3 | 2 of 3 |", "| 1.00 (n=1, no CI) |",
                 "| gmp vs unpruned | 2 (2, 3) | 50.00 vs 0.00 | -2.50 |", "- gmp, seed 1: crashed",
                 "- gmp, seed 2: latency_ms_per_batch", "### Reused runs", "- gmp, seed 2: commit beef, now c0ffee",
                 "**0.1 points** (default for MNISTDataModule)", "Holm p (primary)", "TOST ±0.1 p (Holm)",
                 "non-inferiority 0.1 p (Holm)", "- code: commit `c0ffee` (clean), 8 run(s)",
                 "Over 2 paired seeds, gmp differs from unpruned in test accuracy by -2.50 points"):  # fmt: skip
        assert text in report, text
    for png in PNGS:
        assert f"]({png})" in report and (comparison.output / png).is_file()
    assert "Weights & Biases" not in report and "95% CI]" not in report
    saved = pd.read_csv(comparison.output / "results.csv")
    assert saved["status"].tolist().count("crashed") == 1
    assert {"commit", "dirty", "config_hash", "task_hash", "torch_version", "lightning_version",
            "lightning_prune_version", "reused_stale"} <= set(saved.columns)  # fmt: skip
