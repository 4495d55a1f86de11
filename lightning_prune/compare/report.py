"""The comparison's outputs: ``results.csv``, ``curves.csv``, ``summary.json``, the tables and readings of
``report.md`` (also what the notebook shows), and ``load_results`` to read them back."""

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from lightning_prune.compare.plots import write_plots
from lightning_prune.compare.recorder import CURVE_COLUMNS
from lightning_prune.compare.results import ArmPair, ArmStats, NoTest, Summary, TestResult, now, write_json
from lightning_prune.compare.runner import PRUNED, UNPRUNED, Comparison
from lightning_prune.compare.stats import (
    ALPHA,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    METRIC_BY_NAME,
    METRICS,
    PRIMARY_TEST,
    PRIMARY_TEST_REASON,
    Metric,
    compare_arms,
    describe,
)
from lightning_prune.compare.wandb_summary import log_summary_run

OUTPUT_FILES = ("results.csv", "curves.csv", "summary.json")


def results_frames(records: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``results.csv`` (a row per run) and ``curves.csv`` (a row per run and epoch) from the runs' records."""
    columns = ["arm", "seed", "status", *(m.name for m in METRICS), "epochs", "attempts", "run_dir", "wandb_run"]
    rows = [{column: record.get(column) for column in columns} for record in records]
    results = pd.DataFrame(rows, columns=columns)
    curve_rows = [
        {"arm": record["arm"], "seed": record["seed"], **row}
        for record in records
        if record.get("status") == "finished"
        for row in record.get("curves", [])
    ]
    curves = pd.DataFrame(curve_rows, columns=["arm", "seed", "epoch", *CURVE_COLUMNS])
    return results, curves


def _values_by_seed(results: pd.DataFrame, arm: str, metric: str) -> dict[int, float]:
    rows = results[(results["arm"] == arm) & (results["status"] == "finished")]
    return {int(seed): float(value) for seed, value in zip(rows["seed"], rows[metric], strict=True) if pd.notna(value)}


def comparison_pairs(arms: Sequence[str]) -> list[tuple[str, str]]:
    """``(arm, reference)`` pairs: pruned vs unpruned, each baseline vs unpruned, pruned vs each baseline.

    Example:
        >>> comparison_pairs(["unpruned", "pruned", "gmp"])
        [('pruned', 'unpruned'), ('gmp', 'unpruned'), ('pruned', 'gmp')]
    """
    baselines = [arm for arm in arms if arm not in (UNPRUNED, PRUNED)]
    return [(PRUNED, UNPRUNED), *((b, UNPRUNED) for b in baselines), *((PRUNED, b) for b in baselines)]


def summarize(results: pd.DataFrame, arms: Sequence[str], group: str, command: list[str], seeds: list[int]) -> Summary:
    """The statistics of ``results.csv``: every arm's description and every pair's tests, of every metric."""
    per_arm = {
        arm: {m.name: describe(list(_values_by_seed(results, arm, m.name).values())) for m in METRICS} for arm in arms
    }
    pairs = [
        ArmPair(arm, reference, {
            m.name: compare_arms(_values_by_seed(results, reference, m.name), _values_by_seed(results, arm, m.name))
            for m in METRICS
        })
        for arm, reference in comparison_pairs(arms)
    ]  # fmt: skip
    return Summary(
        group=group,
        command=command,
        created=now(),
        arms=list(arms),
        seeds=seeds,
        runs=results["status"].value_counts().to_dict(),
        primary_test={"name": PRIMARY_TEST, "reason": PRIMARY_TEST_REASON},
        alpha=ALPHA,
        confidence=CONFIDENCE,
        metrics={m.name: {"label": m.label, "unit": m.unit, "scale": m.scale} for m in METRICS},
        per_arm=per_arm,
        comparisons=pairs,
    )


def _interval_text(metric: Metric, described: ArmStats) -> str:
    if described.mean is None:
        return "no finished run"
    mean = metric.show(described.mean)
    if described.t_half_width is None or described.bootstrap_ci is None:
        return f"{mean} (n=1, no CI)"
    low, high = described.bootstrap_ci
    return f"{mean} ± {metric.show(described.t_half_width)} [{metric.show(low)}, {metric.show(high)}]"


def arm_table(summary: Summary) -> pd.DataFrame:
    """Mean ± t-based 95% CI half-width [bootstrap 95% CI] of every metric (rows) for every arm (columns)."""
    arms = list(summary.arms)
    rows = {m.title: [_interval_text(m, summary.per_arm[arm][m.name]) for arm in arms] for m in METRICS}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=arms)
    table.index.name = "metric"
    return table


def _p_text(result: TestResult) -> str:
    """The p-value, or why there is none, short enough for a table cell."""
    if result.p_value is not None:
        return f"{result.p_value:.3g}"
    return "no test (n < 2)" if result.no_test is NoTest.TOO_FEW_SEEDS else "no test (no variance)"


def _d_text(result: TestResult) -> str:
    return f"{result.statistic:.2f}" if result.statistic is not None else "n/a"


def significance_table(pair: ArmPair) -> pd.DataFrame:
    """One pair's tests: means, difference, paired t (primary), Welch t, Mann-Whitney U p-values, Cohen's d."""
    rows = {}
    for metric in METRICS:
        result = pair.metrics[metric.name]
        rows[metric.title] = {
            pair.reference: metric.show(result.mean_reference),
            pair.arm: metric.show(result.mean_other),
            "difference": metric.show(result.difference),
            "paired t p (primary)": _p_text(result.paired_t),
            "Welch t p": _p_text(result.welch_t),
            "Mann-Whitney U p": _p_text(result.mann_whitney_u),
            "Cohen's d": _d_text(result.cohens_d),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "metric"
    return table


def markdown_table(table: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table (pandas' own needs the optional ``tabulate``)."""
    header = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        lines.append("| " + " | ".join([str(index), *map(str, row.tolist())]) + " |")
    return "\n".join(lines)


def arm_reading(summary: Summary) -> str:
    """One sentence on the per-arm table: accuracy, sparsity and effective FLOPs of every arm."""
    acc, sparsity = METRIC_BY_NAME["test_acc"], METRIC_BY_NAME["sparsity"]
    parts = []
    for arm in summary.arms:
        if summary.mean(arm, "test_acc") is None:
            parts.append(f"{arm} has no finished run")
            continue
        text = f"{arm} {acc.show(summary.mean(arm, 'test_acc'))}%"
        text += f" at {sparsity.show(summary.mean(arm, 'sparsity'))}%"
        dense = summary.mean(UNPRUNED, "flops_effective")
        flops = summary.mean(arm, "flops_effective")
        if arm != UNPRUNED and dense and flops is not None:
            text += f" sparsity ({flops / dense:.0%} of the unpruned effective FLOPs)"
        else:
            text += " sparsity"
        parts.append(text)
    return "Mean test accuracy: " + "; ".join(parts) + "."


def accuracy_table(summary: Summary) -> pd.DataFrame:
    """Test accuracy of every pair in one table: the difference, its paired 95% CI and the tests."""
    acc, sparsity = METRIC_BY_NAME["test_acc"], METRIC_BY_NAME["sparsity"]
    rows = []
    for pair in summary.comparisons:
        result, sparsities = pair.metrics["test_acc"], pair.metrics["sparsity"]
        interval = result.paired_difference_t_ci
        rows.append({
            "arm vs reference": f"{pair.arm} vs {pair.reference}",
            "sparsity (%)": f"{sparsity.show(sparsities.mean_other)} vs {sparsity.show(sparsities.mean_reference)}",
            "difference (points)": acc.show(result.difference),
            "paired 95% CI": "n/a" if interval is None else f"[{acc.show(interval[0])}, {acc.show(interval[1])}]",
            "paired t p (primary)": _p_text(result.paired_t),
            "Welch t p": _p_text(result.welch_t),
            "Mann-Whitney U p": _p_text(result.mann_whitney_u),
            "Cohen's d": _d_text(result.cohens_d),
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("arm vs reference")


def significance_reading(pair: ArmPair) -> str:
    """One sentence on a tests table: the primary (paired) test of test accuracy, and the sparsity reached."""
    result = pair.metrics["test_acc"]
    if result.difference is None:
        return f"{pair.arm} vs {pair.reference}: no finished runs to compare."
    change = result.difference * 100
    paired = result.paired_t
    if paired.p_value is None:
        verdict = paired.note
    else:
        significant = "significant" if paired.p_value < ALPHA else "not significant"
        verdict = f"paired t-test p = {paired.p_value:.3g}, {significant} at alpha = {ALPHA}"
    sparsity, shown = pair.metrics["sparsity"], METRIC_BY_NAME["sparsity"].show
    seeds = f"{result.n_pairs} paired seed{'' if result.n_pairs == 1 else 's'}"
    return (
        f"Over {seeds}, {pair.arm} changes test accuracy by {change:+.2f} percentage points against {pair.reference} "
        f"({verdict}), at {shown(sparsity.mean_other)}% sparsity versus {shown(sparsity.mean_reference)}%."
    )


def render_report(summary: Summary, results: pd.DataFrame, plots: Sequence[Path]) -> str:
    """``report.md``: how the comparison ran, the per-arm table, one tests table per pair, the plots."""
    counts = results["status"].value_counts().to_dict()
    lines = [
        f"# Comparison `{summary.group}`",
        "",
        f"Command: `{' '.join(summary.command)}`",
        "",
        f"Arms: {', '.join(summary.arms)}. Seeds: {', '.join(map(str, summary.seeds))}. "
        f"Runs: {', '.join(f'{n} {status}' for status, n in counts.items())}.",
        "",
        "## Per-arm results",
        "",
        "Mean ± half-width of the t-based 95% confidence interval [bootstrap 95% CI, percentile, "
        f"{BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}], over the finished runs.",
        "",
        markdown_table(arm_table(summary)),
        "",
        arm_reading(summary),
        "",
        "## Tests",
        "",
        f"The primary test is the **{PRIMARY_TEST}** over seeds: {PRIMARY_TEST_REASON}. Welch's t-test and the "
        "Mann-Whitney U test are reported as unpaired checks, Cohen's d (pooled standard deviation) as the effect "
        "size. Differences are arm minus reference; p-values are two-sided and not corrected for the "
        f'{len(METRICS)} metrics. "no test" marks a test the data cannot support: fewer than 2 seeds (n < 2), or no '
        "variance (a metric that is the same in every run, such as the dense parameter count).",
        "",
        "### Test accuracy, every pair",
        "",
        "The paired 95% CI is the t-based interval of the seed-by-seed differences (arm minus reference), in points.",
        "",
        markdown_table(accuracy_table(summary)),
        "",
    ]
    for pair in summary.comparisons:
        lines += [
            f"### {pair.arm} vs {pair.reference}",
            "",
            markdown_table(significance_table(pair)),
            "",
            significance_reading(pair),
            "",
        ]
    lines += ["## Plots", ""]
    lines += [f"![{path.stem.replace('_', ' ')}]({path.name})\n" for path in plots]
    unfinished = results[results["status"] != "finished"]
    if len(unfinished):
        lines += ["## Runs that did not finish", "", "Re-run the same command to retry them.", ""]
        lines += [f"- {row.arm}, seed {row.seed}: {row.status} ({row.run_dir})" for row in unfinished.itertuples()]
        lines.append("")
    if summary.wandb:
        lines += ["## Weights & Biases", "", f"Group `{summary.group}`: {summary.wandb}", ""]
    return "\n".join(lines)


def _summary_tables(summary: Summary, results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The W&B summary run's tables: the per-arm table, every pair's tests, every run."""
    tests = [significance_table(p).reset_index().assign(arm=p.arm, reference=p.reference) for p in summary.comparisons]
    return {
        "summary/arms": arm_table(summary).reset_index(),
        "summary/tests": pd.concat(tests) if tests else pd.DataFrame(),
        "summary/runs": results.astype(str),
    }


def write_outputs(comparison: Comparison, records: Sequence[dict[str, Any]], log_wandb: bool = True) -> Summary:
    """Write ``results.csv``, ``curves.csv``, the plots, ``summary.json`` and ``report.md``; with W&B, a summary run.

    Returns:
        The summary (what ``summary.json`` holds).
    """
    output = comparison.output
    results, curves = results_frames(records)
    results.to_csv(output / "results.csv", index=False)
    curves.to_csv(output / "curves.csv", index=False)
    summary = summarize(results, [arm.name for arm in comparison.arms], comparison.group, comparison.command,
                        comparison.seeds)  # fmt: skip
    plots = write_plots(output, results, curves, summary)
    if comparison.wandb and log_wandb:
        config = {"arms": summary.arms, "seeds": summary.seeds, "command": summary.command}
        where = log_summary_run(comparison.project, comparison.group, comparison.output, config,
                                _summary_tables(summary, results), plots)  # fmt: skip
        summary = replace(summary, wandb=where)
    write_json(output / "summary.json", summary.to_json())
    (output / "report.md").write_text(render_report(summary, results, plots))
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
