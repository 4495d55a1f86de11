"""Paired comparison of one metric between arms of two ``lightning-prune compare`` folders (same seeds, same budget).

`compare` tests the arms of one folder against each other; when a later comparison adds a variant (and reuses the
same seeds, data and budget), this pairs its runs with an earlier folder's runs seed by seed. Only the seeds that
finished (with a value) in both are used. It refuses to pair runs made by different code (commit or uncommitted
changes) or of different task configs (model, data, trainer, optimizer: ``task_hash`` in results.csv), or runs that
recorded neither, unless ``--allow-mixed`` is given; the output then says what was mixed. For test accuracy it adds
the tests against the margin (TOST for equivalence within +-M, non-inferiority by M, with the 90% CI), unadjusted:
one pair, no family.

    python bench/paired.py runs/mnist_main:gmp runs/mnist_curve:pruned --metric test_acc --margin 0.1
"""

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from lightning_prune.compare.results import conclusion_text
from lightning_prune.compare.stats import (
    ALPHA,
    METRIC_BY_NAME,
    OTHER_MARGIN,
    PRIMARY_METRIC,
    compare_arms,
    conclude,
    primary_analysis,
)

CODE = ("commit", "dirty", "diff_hash")
TASK = ("task_hash",)


def finished_runs(spec: str, metric: str) -> pd.DataFrame:
    """``FOLDER:ARM`` -> the arm's finished runs with a value of ``metric``, indexed by seed."""
    folder, _, arm = spec.rpartition(":")
    results = pd.read_csv(Path(folder) / "results.csv")
    rows = results[(results["arm"] == arm) & (results["status"] == "finished") & results[metric].notna()]
    if rows.empty:
        raise SystemExit(f"{spec}: no finished run of arm {arm!r} with {metric} in {folder}/results.csv")
    return rows.set_index(rows["seed"].astype(int))


def _states(rows: pd.DataFrame, columns: tuple[str, ...]) -> set[tuple[str, ...]]:
    """The distinct values of ``columns`` over ``rows``; ``("not recorded",)`` where a column is missing or empty."""
    if any(column not in rows for column in columns):
        return {("not recorded",)}
    values = rows[list(columns)].itertuples(index=False)
    return {tuple("not recorded" if pd.isna(v) else str(v) for v in row) for row in values}


def mixed(reference: pd.DataFrame, other: pd.DataFrame) -> list[str]:
    """What differs between the runs to be paired: their code states, their task configs; empty when nothing does."""
    found = []
    for what, columns in (("code (commit, dirty, diff hash)", CODE), ("task config hash", TASK)):
        states = _states(reference, columns) | _states(other, columns)
        if len(states) > 1 or ("not recorded",) in states:
            found.append(f"{what}: {', '.join(sorted('/'.join(s) for s in states))}")
    return found


def default_margin(spec: str) -> float:
    """The margin the reference folder's comparison used (its summary.json), else ``OTHER_MARGIN``."""
    path = Path(spec.rpartition(":")[0]) / "summary.json"
    margin = json.loads(path.read_text()).get("margin") if path.is_file() else None
    return float(margin) if margin is not None else OTHER_MARGIN


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", help="FOLDER:ARM")
    parser.add_argument("other", help="FOLDER:ARM")
    parser.add_argument("--metric", default=PRIMARY_METRIC, choices=sorted(METRIC_BY_NAME))
    parser.add_argument("--margin", type=float, default=None,
                        help="margin of TOST and non-inferiority, points (default: the reference's)")  # fmt: skip
    parser.add_argument("--allow-mixed", action="store_true",
                        help="pair runs of different code or task configs (or without provenance) anyway")  # fmt: skip
    args = parser.parse_args(argv)
    reference, other = finished_runs(args.reference, args.metric), finished_runs(args.other, args.metric)
    seeds = sorted(set(reference.index) & set(other.index))
    differences = mixed(reference.loc[seeds], other.loc[seeds])
    if differences and not args.allow_mixed:
        print(f"refusing to pair {args.other} with {args.reference}: the runs differ in "
              f"{'; '.join(differences)}. Pass --allow-mixed to pair them anyway.", file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    values = [{s: float(runs.loc[s, args.metric]) for s in seeds} for runs in (reference, other)]
    metric = METRIC_BY_NAME[args.metric]
    result = compare_arms(*values, metric.structural)
    shown, interval, p_value = metric.show, result.paired_difference_t_ci, result.paired_t.p_value
    shown_interval = "n/a" if interval is None else f"[{shown(interval[0])}, {shown(interval[1])}]"
    dz = result.cohens_dz.statistic
    print(
        f"{args.other} vs {args.reference}, {args.metric}, seeds {seeds} (n = {len(seeds)}): "
        f"{shown(result.mean_other)} vs {shown(result.mean_reference)}, difference {shown(result.difference)}, "
        f"paired 95% CI {shown_interval}, paired t p {_p(p_value)}" + ("" if dz is None else f", d_z {dz:.2f}")
    )
    if differences:
        print(f"WARNING: paired although the runs differ (--allow-mixed): {'; '.join(differences)}")
    else:
        print(f"provenance: the same code and task config on both sides ({'; '.join(_summary(reference.loc[seeds]))})")
    if args.metric == PRIMARY_METRIC:
        margin = args.margin if args.margin is not None else default_margin(args.reference)
        primary = primary_analysis(*values, margin / metric.scale)
        ci90 = "n/a" if primary.ci90 is None else f"[{shown(primary.ci90[0])}, {shown(primary.ci90[1])}]"
        tost_p, non_inferiority_p = primary.tost.p_value, primary.non_inferiority.p_value
        conclusions = conclusion_text(conclude(primary.difference, p_value, tost_p, non_inferiority_p, ALPHA), margin)
        print(f"margin {margin:g} points: 90% CI {ci90}, TOST p {_p(tost_p)}, non-inferiority p "
              f"{_p(non_inferiority_p)} (unadjusted): {conclusions}")  # fmt: skip


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _summary(rows: pd.DataFrame) -> list[str]:
    code = next(iter(_states(rows, CODE)))
    return [f"commit {code[0]}" + (f", uncommitted changes {code[2]}" if code[1] == "True" else ""),
            f"task config hash {next(iter(_states(rows, TASK)))[0]}"]  # fmt: skip


if __name__ == "__main__":
    main()
