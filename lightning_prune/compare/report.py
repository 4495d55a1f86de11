"""The comparison's outputs: ``results.csv``, ``curves.csv``, ``summary.json``, ``report.md`` and the plots, and
``load_results`` to read them back. The statistics are made in ``summary``, the tables and readings in ``tables``;
their names are importable from here too (the notebook's entry point)."""

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from lightning_prune.compare.claims import Claim, Owner, State, claim_once, claim_waiting, claims_folder
from lightning_prune.compare.plots import write_plots
from lightning_prune.compare.provenance import content_hash
from lightning_prune.compare.results import Summary, write_json
from lightning_prune.compare.runner import Comparison
from lightning_prune.compare.stats import (
    ALPHA,
    METRICS,
    PRIMARY_TEST,
    PRIMARY_TEST_REASON,
)
from lightning_prune.compare.status import RunStatus
from lightning_prune.compare.summary import comparison_pairs, results_frames, summarize
from lightning_prune.compare.tables import (
    BOOTSTRAP_NOTE,
    accuracy_table,
    arm_reading,
    arm_table,
    examples_table,
    markdown_table,
    secondary_table,
    significance_reading,
    significance_table,
)
from lightning_prune.compare.testset import EXAMPLE_BOOTSTRAP_RESAMPLES
from lightning_prune.compare.wandb_summary import log_summary_run

__all__ = [
    "OUTPUT_FILES", "accuracy_table", "arm_reading", "arm_table", "comparison_pairs", "examples_table",
    "load_results", "markdown_table", "render_report", "results_frames", "secondary_table", "significance_reading",
    "significance_table", "summarize", "write_outputs",
]  # fmt: skip

OUTPUT_FILES = ("results.csv", "curves.csv", "summary.json")
# the report's claims folder, beside the runs' (a run's name always holds "-seed")
REPORT_CLAIM = "_report"


def _runs_line(summary: Summary, results: pd.DataFrame) -> str:
    counts = results["status"].value_counts().to_dict()
    finished = ", ".join(f"{arm} {summary.finished.get(arm, 0)}" for arm in summary.arms)
    runs = ", ".join(f"{n} {status}" for status, n in counts.items())
    seeds = ", ".join(map(str, summary.seeds))
    return f"Arms: {', '.join(summary.arms)}. Seeds: {seeds}. Runs: {runs}. Finished seeds per arm: {finished}."


def _provenance_lines(summary: Summary) -> list[str]:
    lines = ["## Provenance", ""]
    if not summary.provenance.get("code"):
        lines.append("- code: not recorded (runs made before `compare` recorded their commit)")
    for code in summary.provenance.get("code", []):
        states = {"True": f"uncommitted changes `{code.get('diff_hash')}`", "False": "clean"}
        state = states.get(str(code.get("dirty")), "tree state unknown")
        lines.append(f"- code: commit `{code.get('commit')}` ({state}), {code['runs']} run(s)")
    for v in summary.provenance.get("versions", []):
        lines.append(f"- torch {v.get('torch_version')}, lightning {v.get('lightning_version')}, lightning-prune "
                     f"{v.get('lightning_prune_version')}: {v['runs']} run(s)")  # fmt: skip
    for arm, hashes in summary.provenance.get("task_hash", {}).items():
        if hashes != ["None"]:
            lines.append(f"- {arm}: task config hash {', '.join(f'`{h}`' for h in hashes)}")
    lines += ["", "Each run's commit, config hash and versions are in `results.csv`. Resuming skips only finished runs "
              "of the same commit, uncommitted changes, config hash and versions.", ""]  # fmt: skip
    if summary.reused_runs:
        lines += ["### Reused runs", "", "Finished runs made by other code or config, kept by `--reuse-stale`:", ""]
        lines += [f"- {r['arm']}, seed {r['seed']}: {r['reasons']}" for r in summary.reused_runs]
        lines.append("")
    return lines


def _methods(summary: Summary) -> str:
    margin, family = summary.margin, max((p.primary.holm_family for p in summary.comparisons if p.primary), default=0)
    return (
        f"The primary endpoint is test accuracy, the primary test the **{PRIMARY_TEST}** over seeds: "
        f"{PRIMARY_TEST_REASON}. Every statistic of a pair uses only the seeds finished in both arms (n paired; the "
        "arms' own counts in brackets); differences are arm minus reference, in percentage points. The paired t "
        f"p-values are Holm-adjusted over the {family} pair(s) of this report that have one. The margin is "
        f"**{margin:g} points** ({summary.margin_source}): TOST tests equivalence within ±{margin:g} and the "
        f"one-sided test non-inferiority (not worse by more than {margin:g}), each with the 90% t-interval of the "
        "paired differences that goes with it at alpha = 0.05, each Holm-adjusted over the pairs as a family of its "
        f"own. The conclusion says *better* or *worse* (Holm-adjusted paired t p < {ALPHA}), *equivalent within "
        f"±{margin:g}*, *not worse by more than {margin:g}*, or *inconclusive*; a large p-value alone concludes "
        "nothing. d_z is the paired effect size (mean over standard deviation of the paired differences)."
    )


def render_report(summary: Summary, results: pd.DataFrame, plots: Sequence[Path], missing: Sequence[str] = ()) -> str:
    """``report.md``: how the comparison ran and by which code, the planned runs ``missing`` from a partial report
    (``--report-only`` before every run finished), warnings, the per-arm table, the primary endpoint of every pair,
    the secondary and test-set tests, every metric per pair, the plots, what did not finish."""
    lines = [f"# Comparison `{summary.group}`", "", f"Command: `{' '.join(summary.command)}`", "",
             _runs_line(summary, results), ""]  # fmt: skip
    if missing:
        lines += [f"**Partial report: {len(missing)} planned run(s) have not finished.** Every statistic below uses "
                  "the finished runs only; write the report again once they are done.", "",
                  *(f"- {run}" for run in missing), ""]  # fmt: skip
    if summary.warnings:
        lines += ["**Warnings**", "", *(f"- {warning}" for warning in summary.warnings), ""]
    lines += [
        "## Per-arm results",
        "",
        "Mean ± half-width of the t-based 95% confidence interval over the arm's finished seeds that have the value "
        f"(n). {BOOTSTRAP_NOTE} A value that is the same in every run is marked so: it gets no test.",
        "",
        markdown_table(arm_table(summary)),
        "",
        arm_reading(summary),
        "",
        "## Test accuracy: primary analysis",
        "",
        _methods(summary),
        "",
        markdown_table(accuracy_table(summary)),
        "",
        *(line for pair in summary.comparisons for line in (f"- {significance_reading(pair)}",)),
        "",
        "### Secondary tests of test accuracy (unadjusted)",
        "",
        "On the same paired seeds. The Mann-Whitney p-value comes from the permutation distribution of U (exact, or "
        "Monte Carlo when the splits are too many), ties included; Cohen's d uses the pooled standard deviation.",
        "",
        markdown_table(secondary_table(summary)),
        "",
        "### Test-set uncertainty, per seed (secondary, unadjusted)",
        "",
        "The two runs of one seed over the same test examples: the paired percentile bootstrap 95% interval of the "
        f"accuracy difference over the test examples ({EXAMPLE_BOOTSTRAP_RESAMPLES} resamples), and McNemar's exact "
        "test on the examples only one of the two gets right.",
        "",
        markdown_table(examples_table(summary)),
        "",
        "## Every metric, per pair",
        "",
        "Paired t p-values here are unadjusted; Welch, Mann-Whitney U and Cohen's d are secondary. p-values are "
        f'two-sided and not corrected for the {len(METRICS)} metrics. "values only" marks a metric that is the same '
        'in every run of an arm (no seed-to-seed variation to test); "no test" one the data cannot support.',
        "",
    ]
    for pair in summary.comparisons:
        lines += [f"### {pair.arm} vs {pair.reference}", "", markdown_table(significance_table(pair)), "",
                  significance_reading(pair), ""]  # fmt: skip
    lines += ["## Plots", ""]
    lines += [f"![{path.stem.replace('_', ' ')}]({path.name})\n" for path in plots]
    lines += _provenance_lines(summary)
    unfinished = results[results["status"] != RunStatus.FINISHED]
    if len(unfinished):
        lines += ["## Runs that did not finish", "", "Re-run the same command to retry them.", ""]
        lines += [f"- {row.arm}, seed {row.seed}: {row.status} ({row.run_dir})" for row in unfinished.itertuples()]
        lines.append("")
    if summary.missing_values:
        lines += ["## Missing values", "", "Finished runs without these metrics (left out of their statistics):", ""]
        lines += [f"- {m['arm']}, seed {m['seed']}: {', '.join(m['metrics'])}" for m in summary.missing_values]
        lines.append("")
    if summary.wandb:
        lines += ["## Weights & Biases", "", f"Group `{summary.group}`: {summary.wandb}", ""]
    return "\n".join(lines)


def _summary_tables(summary: Summary, results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The W&B summary run's tables: the per-arm table, the primary analysis, every pair's tests, every run."""
    tests = [significance_table(p).reset_index().assign(arm=p.arm, reference=p.reference) for p in summary.comparisons]
    return {
        "summary/arms": arm_table(summary).reset_index(),
        "summary/primary": accuracy_table(summary).reset_index() if summary.comparisons else pd.DataFrame(),
        "summary/tests": pd.concat(tests) if tests else pd.DataFrame(),
        "summary/runs": results.astype(str),
    }


def write_outputs(
    comparison: Comparison, records: Sequence[dict[str, Any]], log_wandb: bool = True, missing: Sequence[str] = ()
) -> Summary:
    """Write ``results.csv``, ``curves.csv``, the plots, ``summary.json`` and ``report.md`` (labelled partial when
    planned runs are ``missing``); with W&B, a summary run.

    Returns:
        The summary (what ``summary.json`` holds).
    """
    output = comparison.output
    results, curves = results_frames(records)
    results.to_csv(output / "results.csv", index=False)
    curves.to_csv(output / "curves.csv", index=False)
    summary = summarize(results, [arm.name for arm in comparison.arms], comparison.group, comparison.command,
                        comparison.seeds, comparison.margin, comparison.margin_source)  # fmt: skip
    plots = write_plots(output, results, curves, summary)
    if comparison.wandb and log_wandb:
        config = {"arms": summary.arms, "seeds": summary.seeds, "command": summary.command, "margin": summary.margin}
        where = log_summary_run(comparison.project, comparison.group, comparison.output, config,
                                _summary_tables(summary, results), plots)  # fmt: skip
        summary = replace(summary, wandb=where)
    write_json(output / "summary.json", summary.to_json())
    (output / "report.md").write_text(render_report(summary, results, plots, missing))
    return summary


def _report_claims(comparison: Comparison) -> Path:
    return claims_folder(comparison.output, REPORT_CLAIM)


def report_stamp(comparison: Comparison, records: Sequence[dict[str, Any]]) -> str:
    """What a report is made of: the runs' records and the margin. Processes that see the same runs on disk agree."""
    return content_hash({"records": list(records), "margin": comparison.margin})


def write_outputs_locked(
    comparison: Comparison, records: Sequence[dict[str, Any]], timeout: float, log_wandb: bool = True,
    missing: Sequence[str] = ()
) -> Summary:  # fmt: skip
    """``write_outputs`` while holding the report's claim (waiting for it), so that two processes never write the
    outputs into each other."""
    held = claim_waiting(_report_claims(comparison), Owner.me(), timeout)
    try:
        summary = write_outputs(comparison, records, log_wandb, missing)
    except BaseException:
        held.release("failed")
        raise
    held.release("written", stamp=report_stamp(comparison, records), partial=bool(missing))
    return summary


def write_outputs_once(comparison: Comparison, records: Sequence[dict[str, Any]], timeout: float) -> Summary | str:
    """``write_outputs`` unless another process is writing them or already wrote them from the same records (shards
    that finish together); then who, in words."""
    stamp = report_stamp(comparison, records)
    held = claim_once(_report_claims(comparison), Owner.me(), timeout, stamp)
    if not isinstance(held, Claim):
        who = held.owner.describe() if held.owner else "another process"
        return f"written by {who}" if held.state is State.FREE else f"being written by {who}"
    try:
        summary = write_outputs(comparison, records)
    except BaseException:
        held.release("failed")
        raise
    held.release("written", stamp=stamp)
    return summary


def load_results(output: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, Summary]:
    """Read a comparison's ``results.csv``, ``curves.csv`` and ``summary.json`` (what the notebook starts from).

    Raises:
        FileNotFoundError: The folder holds no finished comparison output.
    """
    output = Path(output)
    missing = [name for name in OUTPUT_FILES if not (output / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{output} has no {', '.join(missing)}: run `lightning-prune compare --output {output}` first"
        )
    summary = Summary.from_json(json.loads((output / "summary.json").read_text()))
    return pd.read_csv(output / "results.csv"), pd.read_csv(output / "curves.csv"), summary
