"""The tables and readings of ``report.md`` (also what the notebook shows), made from a ``Summary``: every table says
how many seeds each number rests on, and every reading says only what a test showed."""

import pandas as pd

from lightning_prune.compare.results import (
    ArmPair,
    ArmStats,
    Conclusion,
    NoTest,
    Summary,
    TestResult,
    conclusion_text,
)
from lightning_prune.compare.stats import (
    ALPHA,
    BOOTSTRAP_MIN_SEEDS,
    METRIC_BY_NAME,
    METRICS,
    PRIMARY_METRIC,
    Metric,
)
from lightning_prune.compare.status import UNPRUNED

ACCURACY = METRIC_BY_NAME[PRIMARY_METRIC]
SPARSITY = METRIC_BY_NAME["sparsity"]
_NO_TEST_TEXT = {
    NoTest.TOO_FEW_SEEDS: "no test (n < 2)",
    NoTest.NO_VARIANCE: "no test (no variance)",
    NoTest.DETERMINISTIC: "values only",
    NoTest.NOT_RECORDED: "not recorded",
}


def markdown_table(table: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table (pandas' own needs the optional ``tabulate``)."""
    header = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        lines.append("| " + " | ".join([str(index), *map(str, row.tolist())]) + " |")
    return "\n".join(lines)


def p_text(result: TestResult) -> str:
    """The p-value, or why there is none, short enough for a table cell."""
    if result.p_value is not None:
        return f"{result.p_value:.3g}"
    return _NO_TEST_TEXT.get(result.no_test, "no test")


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _effect_text(result: TestResult) -> str:
    if result.statistic is not None:
        return f"{result.statistic:.2f}"
    return "values only" if result.no_test is NoTest.DETERMINISTIC else "n/a"


def interval_text(metric: Metric, interval: tuple[float, float] | None, test: TestResult | None = None) -> str:
    """``[low, high]`` in the metric's units; without an interval, why (from ``test``, the matching test)."""
    if interval is not None:
        return f"[{metric.show(interval[0])}, {metric.show(interval[1])}]"
    if test is not None and test.no_test is NoTest.NO_VARIANCE:
        return "n/a (no variance)"
    return "n/a (n < 2)" if test is not None and test.no_test is NoTest.TOO_FEW_SEEDS else "n/a"


def _arm_cell(metric: Metric, described: ArmStats) -> str:
    if described.mean is None:
        return "no finished run"
    mean = metric.show(described.mean)
    if described.n == 1:
        return f"{mean} (n=1, no CI)"
    if not described.varies:
        return f"{mean} (n={described.n}, same in every run)"
    text = f"{mean} ± {metric.show(described.t_half_width)} (n={described.n})"
    if described.bootstrap_ci is not None:
        low, high = described.bootstrap_ci
        text += f" [percentile bootstrap {metric.show(low)}, {metric.show(high)}]"
    return text


def arm_table(summary: Summary) -> pd.DataFrame:
    """Every metric (rows) of every arm (columns): mean ± half-width of the t-based 95% CI, with n, the seeds that have
    a value; the percentile bootstrap interval from ``BOOTSTRAP_MIN_SEEDS`` seeds on. The first row counts the
    finished seeds of the planned ones."""
    arms = list(summary.arms)
    planned = len(summary.seeds)
    rows = {"finished seeds": [f"{summary.finished.get(arm, summary.per_arm[arm][PRIMARY_METRIC].n)} of {planned}"
                               for arm in arms]}  # fmt: skip
    rows |= {m.title: [_arm_cell(m, summary.per_arm[arm][m.name]) for arm in arms] for m in METRICS}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=arms)
    table.index.name = "metric"
    return table


def arm_reading(summary: Summary) -> str:
    """One sentence on the per-arm table: accuracy, sparsity and effective FLOPs of every arm, with its seed count."""
    parts = []
    for arm in summary.arms:
        described = summary.stats(arm, PRIMARY_METRIC)
        if described is None or described.mean is None:
            parts.append(f"{arm} has no finished run")
            continue
        text = f"{arm} {ACCURACY.show(described.mean)}% (n={described.n})"
        text += f" at {SPARSITY.show(summary.mean(arm, 'sparsity'))}% sparsity"
        dense, flops = summary.mean(UNPRUNED, "flops_effective"), summary.mean(arm, "flops_effective")
        if arm != UNPRUNED and dense and flops is not None:
            text += f" ({flops / dense:.0%} of the unpruned effective FLOPs)"
        parts.append(text)
    return "Mean test accuracy: " + "; ".join(parts) + "."


def _seeds_text(n_pairs: int, n_other: int, n_reference: int) -> str:
    return f"{n_pairs} ({n_other}, {n_reference})"


def accuracy_table(summary: Summary) -> pd.DataFrame:
    """The primary endpoint, every pair: seeds (paired, and each arm's), difference, its paired 95% CI, the paired t
    p-value and its Holm adjustment, d_z, the 90% CI with TOST and non-inferiority (Holm-adjusted) at the margin, and
    the conclusion."""
    rows = []
    margin = summary.margin if summary.margin is not None else float("nan")
    for pair in summary.comparisons:
        result, sparsities, primary = pair.metrics[PRIMARY_METRIC], pair.metrics["sparsity"], pair.primary
        rows.append({
            "arm vs reference": f"{pair.arm} vs {pair.reference}",
            "seeds: paired (arm, ref)": _seeds_text(result.n_pairs, result.n_other, result.n_reference),
            "sparsity (%)": f"{SPARSITY.show(sparsities.mean_other)} vs {SPARSITY.show(sparsities.mean_reference)}",
            "difference (points)": ACCURACY.show(result.difference),
            "paired 95% CI": interval_text(ACCURACY, result.paired_difference_t_ci, result.paired_t),
            "paired t p": p_text(result.paired_t),
            "Holm p (primary)": _p(primary.p_holm) if primary else "n/a",
            "d_z": _effect_text(result.cohens_dz),
            "90% CI": interval_text(ACCURACY, primary.ci90, primary.tost) if primary else "n/a",
            f"TOST ±{margin:g} p (Holm)": _p(primary.tost_p_holm) if primary else "n/a",
            f"non-inferiority {margin:g} p (Holm)": _p(primary.non_inferiority_p_holm) if primary else "n/a",
            "conclusion": conclusion_text(primary.conclusions, margin) if primary else "n/a",
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("arm vs reference")


def secondary_table(summary: Summary) -> pd.DataFrame:
    """The secondary tests of test accuracy, every pair, unadjusted, on the same paired seeds as the primary test."""
    rows = []
    for pair in summary.comparisons:
        result = pair.metrics[PRIMARY_METRIC]
        rows.append({
            "arm vs reference": f"{pair.arm} vs {pair.reference}",
            "seeds: paired (arm, ref)": _seeds_text(result.n_pairs, result.n_other, result.n_reference),
            "Welch t p": p_text(result.welch_t),
            "Mann-Whitney U p": p_text(result.mann_whitney_u),
            "Mann-Whitney p from": result.mann_whitney_u.method or "n/a",
            "Cohen's d (pooled)": _effect_text(result.cohens_d),
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("arm vs reference")


def examples_table(summary: Summary) -> pd.DataFrame:
    """Per pair and seed, the two runs over the same test examples: accuracies, difference, the paired bootstrap 95%
    CI over test examples, the discordant counts and McNemar's exact p (secondary, unadjusted)."""
    rows = []
    for pair in summary.comparisons:
        for seed in pair.test_set:
            rows.append({
                "arm vs reference": f"{pair.arm} vs {pair.reference}",
                "seed": seed.seed,
                "test examples": "n/a" if seed.n_examples is None else seed.n_examples,
                "accuracy (%), arm vs ref": f"{ACCURACY.show(seed.accuracy_other)} vs "
                f"{ACCURACY.show(seed.accuracy_reference)}",
                "difference (points)": ACCURACY.show(seed.difference),
                "bootstrap 95% CI over examples": interval_text(ACCURACY, seed.bootstrap_ci, seed.mcnemar),
                "only arm right / only ref right": "n/a" if seed.only_other is None
                else f"{seed.only_other} / {seed.only_reference}",
                "McNemar exact p": p_text(seed.mcnemar),
            })  # fmt: skip
    columns = ["arm vs reference", "seed", "test examples", "accuracy (%), arm vs ref", "difference (points)",
               "bootstrap 95% CI over examples", "only arm right / only ref right", "McNemar exact p"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns).set_index("arm vs reference")


def significance_table(pair: ArmPair) -> pd.DataFrame:
    """One pair, every metric, on the seeds finished in both: means, difference, its paired 95% CI, the paired t-test
    (unadjusted here), d_z, and the secondary Welch t, Mann-Whitney U and pooled Cohen's d. A metric that is the same
    in every run of either arm has values only."""
    rows = {}
    for metric in METRICS:
        result = pair.metrics[metric.name]
        rows[metric.title] = {
            "seeds: paired (arm, ref)": _seeds_text(result.n_pairs, result.n_other, result.n_reference),
            pair.reference: metric.show(result.mean_reference),
            pair.arm: metric.show(result.mean_other),
            "difference": metric.show(result.difference),
            "paired 95% CI": interval_text(metric, result.paired_difference_t_ci, result.paired_t),
            "paired t p": p_text(result.paired_t),
            "d_z": _effect_text(result.cohens_dz),
            "Welch t p": p_text(result.welch_t),
            "Mann-Whitney U p": p_text(result.mann_whitney_u),
            "Cohen's d (pooled)": _effect_text(result.cohens_d),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "metric"
    return table


def significance_reading(pair: ArmPair) -> str:
    """One sentence on a pair's primary endpoint: the difference over the paired seeds, its intervals, and what the
    Holm-adjusted tests allow one to conclude against the margin; never more than a test showed."""
    result, primary = pair.metrics[PRIMARY_METRIC], pair.primary
    if result.difference is None:
        return f"{pair.arm} vs {pair.reference}: no seed finished in both arms, nothing to compare."
    seeds = f"{result.n_pairs} paired seed{'' if result.n_pairs == 1 else 's'}"
    text = f"Over {seeds}, {pair.arm} differs from {pair.reference} in test accuracy by {result.difference * 100:+.2f} "
    text += "points"
    if result.paired_difference_t_ci is not None:
        text += f" (paired 95% CI {interval_text(ACCURACY, result.paired_difference_t_ci)})"
    if primary is None:
        return text + "."
    margin = primary.margin * ACCURACY.scale
    if result.paired_t.p_value is None:
        why = result.paired_t.note
        return text + f": {why}, so it is inconclusive against the margin of {margin:g} points."
    tests = (f"Holm-adjusted paired t p = {_p(primary.p_holm)}; TOST ±{margin:g} p = {_p(primary.tost_p_holm)}; "
             f"non-inferiority p = {_p(primary.non_inferiority_p_holm)}; 90% CI "
             f"{interval_text(ACCURACY, primary.ci90)}")  # fmt: skip
    verdict = conclusion_text(primary.conclusions, margin)
    if primary.conclusions == (Conclusion.INCONCLUSIVE,):
        verdict = (f"inconclusive: at alpha = {ALPHA} it is shown neither better, worse, equivalent within "
                   f"±{margin:g} points nor not worse by more than {margin:g}")  # fmt: skip
    elif Conclusion.EQUIVALENT in primary.conclusions or Conclusion.NON_INFERIOR in primary.conclusions:
        verdict += " points"
    sparsity = pair.metrics["sparsity"]
    return (f"{text}: {verdict} ({tests}), at {SPARSITY.show(sparsity.mean_other)}% sparsity versus "
            f"{SPARSITY.show(sparsity.mean_reference)}%.")  # fmt: skip


BOOTSTRAP_NOTE = (
    f"The percentile bootstrap interval of a mean is shown only from {BOOTSTRAP_MIN_SEEDS} seeds on: below, it "
    "undercovers badly (with 3 seeds it is the range of the values)."
)
