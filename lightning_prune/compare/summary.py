"""From the runs' records to the statistics: ``results.csv``'s and ``curves.csv``'s frames, and ``summarize``, which
builds the ``Summary`` (every arm described, every pair compared on the seeds finished in both, the primary endpoint
against the margin with Holm's adjustment over the pairs, the test-set comparisons per seed), with what a reader must
know first: missing values, reused stale runs, unequal seed counts, mixed code."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lightning_prune.compare.provenance import CODE_COLUMNS, PROVENANCE_COLUMNS, VERSION_COLUMNS
from lightning_prune.compare.recorder import CURVE_COLUMNS
from lightning_prune.compare.results import ArmPair, Summary, TestSetComparison, now
from lightning_prune.compare.stats import (
    ALPHA,
    CONFIDENCE,
    METRICS,
    OTHER_MARGIN,
    PRIMARY_METRIC,
    PRIMARY_TEST,
    PRIMARY_TEST_REASON,
    adjust_primary,
    compare_arms,
    describe,
    primary_analysis,
)
from lightning_prune.compare.status import PRUNED, UNPRUNED, RunStatus
from lightning_prune.compare.testset import TEST_CORRECT_FILE, compare_test_sets, load_test_correct

RESULT_COLUMNS = ("arm", "seed", "status", *(m.name for m in METRICS), "epochs", "attempts", "test_examples",
                  "run_dir", "wandb_run", *PROVENANCE_COLUMNS, "reused_stale")  # fmt: skip


def results_frames(records: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``results.csv`` (a row per run) and ``curves.csv`` (a row per run and epoch) from the runs' records."""
    rows = [{column: record.get(column) for column in RESULT_COLUMNS} for record in records]
    results = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    curve_rows = [
        {"arm": record["arm"], "seed": record["seed"], **row}
        for record in records
        if record.get("status") == RunStatus.FINISHED
        for row in record.get("curves", [])
    ]
    curves = pd.DataFrame(curve_rows, columns=["arm", "seed", "epoch", *CURVE_COLUMNS])
    return results, curves


def _finished(results: pd.DataFrame, arm: str | None = None) -> pd.DataFrame:
    rows = results[results["status"] == RunStatus.FINISHED]
    return rows if arm is None else rows[rows["arm"] == arm]


def values_by_seed(results: pd.DataFrame, arm: str, metric: str) -> dict[int, float]:
    """``{seed: value}`` of one metric over an arm's finished runs that have a value."""
    rows = _finished(results, arm)
    return {int(seed): float(value) for seed, value in zip(rows["seed"], rows[metric], strict=True) if pd.notna(value)}


def comparison_pairs(arms: Sequence[str]) -> list[tuple[str, str]]:
    """``(arm, reference)`` pairs: pruned vs unpruned, each other arm vs unpruned, pruned vs each other arm.

    Example:
        >>> comparison_pairs(["unpruned", "pruned", "gmp"])
        [('pruned', 'unpruned'), ('gmp', 'unpruned'), ('pruned', 'gmp')]
    """
    others = [arm for arm in arms if arm not in (UNPRUNED, PRUNED)]
    return [(PRUNED, UNPRUNED), *((b, UNPRUNED) for b in others), *((PRUNED, b) for b in others)]


def _test_sets(results: pd.DataFrame, arm: str, reference: str, seeds: Sequence[int]) -> list[TestSetComparison]:
    """The per-seed test-set comparisons of a pair, on its paired seeds, from the runs' ``test_correct.npz``."""

    def load(name: str, seed: int) -> Any:
        rows = _finished(results, name)
        run_dir = rows.loc[rows["seed"] == seed, "run_dir"]
        if run_dir.empty or pd.isna(run_dir.iloc[0]):
            return None
        return load_test_correct(Path(str(run_dir.iloc[0])) / TEST_CORRECT_FILE)

    return [compare_test_sets(seed, load(reference, seed), load(arm, seed)) for seed in seeds]


def missing_values(results: pd.DataFrame) -> list[dict[str, Any]]:
    """The finished runs that lack a metric (NaN or empty): their arm, seed and the metrics they lack."""
    missing = []
    for row in _finished(results).itertuples(index=False):
        lacking = [m.name for m in METRICS if pd.isna(getattr(row, m.name))]
        if lacking:
            missing.append({"arm": row.arm, "seed": int(row.seed), "metrics": lacking})
    return missing


def _distinct(results: pd.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
    """The distinct values of ``columns`` among finished runs, each with how many runs have it."""
    rows = _finished(results)
    present = [c for c in columns if c in rows]
    if rows.empty or not present:
        return []
    keys = rows[present].astype(str)
    counts = keys.value_counts(sort=False)
    return [{**dict(zip(present, key, strict=True)), "runs": int(n)} for key, n in counts.items()]


def provenance_summary(results: pd.DataFrame) -> dict[str, Any]:
    """The code states, versions and task configs the finished runs were made with, each with its run count."""
    task = {arm: sorted({str(h) for h in rows["task_hash"]}) for arm, rows in _finished(results).groupby("arm")}
    return {"code": _distinct(results, CODE_COLUMNS), "versions": _distinct(results, VERSION_COLUMNS),
            "task_hash": task}  # fmt: skip


def _warnings(results: pd.DataFrame, arms: Sequence[str], finished: dict[str, int], provenance: dict) -> list[str]:
    found = []
    if len(set(finished.values())) > 1:
        counts = ", ".join(f"{arm} {finished[arm]}" for arm in arms)
        found.append(f"the arms have different numbers of finished seeds ({counts}): every pair uses only the seeds "
                     "finished in both, and its n says how many")  # fmt: skip
    if len(provenance["code"]) > 1:
        found.append(f"the runs were made by {len(provenance['code'])} different code states (commits or uncommitted "
                     "changes): see Provenance")  # fmt: skip
    if len(provenance["versions"]) > 1:
        found.append("the runs were made with different versions of torch, lightning or lightning-prune")
    tasks = {arm: hashes for arm, hashes in provenance["task_hash"].items() if hashes != ["None"]}
    if len({tuple(hashes) for hashes in tasks.values()}) > 1:
        found.append("the arms train different task configs (model, data, trainer or optimizer differ, see "
                     "task_hash): their differences are not due to pruning alone")  # fmt: skip
    reused = results["reused_stale"].notna() & (results["reused_stale"].astype(str) != "")
    if reused.any():
        found.append(f"{int(reused.sum())} finished run(s) made by other code or config were reused (--reuse-stale): "
                     "see Reused runs")  # fmt: skip
    return found


def summarize(
    results: pd.DataFrame,
    arms: Sequence[str],
    group: str,
    command: list[str],
    seeds: list[int],
    margin: float = OTHER_MARGIN,
    margin_source: str = "default",
) -> Summary:
    """The statistics of ``results.csv``: every arm's description and every pair's statistics, of every metric; the
    primary endpoint (test accuracy) against ``margin`` (points) with Holm's adjustment over the pairs.

    Args:
        margin: The equivalence / non-inferiority margin of test accuracy, in percentage points.
        margin_source: Where the margin came from, for the report.
    """
    per_arm = {arm: {m.name: describe(list(values_by_seed(results, arm, m.name).values())) for m in METRICS}
               for arm in arms}  # fmt: skip
    primary_scale = next(m.scale for m in METRICS if m.name == PRIMARY_METRIC)
    pairs, analyses = [], []
    for arm, reference in comparison_pairs(arms):
        metrics = {
            m.name: compare_arms(
                values_by_seed(results, reference, m.name), values_by_seed(results, arm, m.name), m.structural
            )
            for m in METRICS
        }
        accuracies = [values_by_seed(results, name, PRIMARY_METRIC) for name in (reference, arm)]
        analyses.append(primary_analysis(*accuracies, margin / primary_scale))
        test_set = _test_sets(results, arm, reference, metrics[PRIMARY_METRIC].seeds)
        pairs.append(ArmPair(arm, reference, metrics, test_set=test_set))
    adjusted = adjust_primary(analyses, [pair.metrics[PRIMARY_METRIC].paired_t for pair in pairs], ALPHA)
    pairs = [ArmPair(p.arm, p.reference, p.metrics, a, p.test_set) for p, a in zip(pairs, adjusted, strict=True)]
    finished = {arm: len(_finished(results, arm)) for arm in arms}
    provenance = provenance_summary(results)
    reused = _finished(results)
    reused = reused[reused["reused_stale"].notna() & (reused["reused_stale"].astype(str) != "")]
    return Summary(
        group=group,
        command=command,
        created=now(),
        arms=list(arms),
        seeds=seeds,
        runs=results["status"].value_counts().to_dict(),
        primary_test={"name": PRIMARY_TEST, "reason": PRIMARY_TEST_REASON, "metric": PRIMARY_METRIC},
        alpha=ALPHA,
        confidence=CONFIDENCE,
        metrics={m.name: {"label": m.label, "unit": m.unit, "scale": m.scale} for m in METRICS},
        per_arm=per_arm,
        comparisons=pairs,
        margin=margin,
        margin_source=margin_source,
        finished=finished,
        provenance=provenance,
        reused_runs=[{"arm": r.arm, "seed": int(r.seed), "reasons": str(r.reused_stale)} for r in reused.itertuples()],
        missing_values=missing_values(results),
        warnings=_warnings(results, arms, finished, provenance),
    )
