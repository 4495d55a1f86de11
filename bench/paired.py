"""Paired test of one metric between arms of two ``lightning-prune compare`` folders (same seeds, same budget).

`compare` tests the arms of one folder against each other; when a later comparison adds a variant (and reuses the
same seeds, data and budget), this pairs its runs with an earlier folder's runs seed by seed. Only the seeds that
finished in both are used.

    python bench/paired.py runs/mnist_main:gmp runs/mnist_curve:pruned --metric test_acc
"""

import argparse
from pathlib import Path

import pandas as pd

from lightning_prune.compare.stats import METRIC_BY_NAME, compare_arms


def by_seed(spec: str, metric: str) -> dict[int, float]:
    """``FOLDER:ARM`` -> ``{seed: value}`` of the finished runs."""
    folder, _, arm = spec.rpartition(":")
    results = pd.read_csv(Path(folder) / "results.csv")
    rows = results[(results["arm"] == arm) & (results["status"] == "finished")]
    if rows.empty:
        raise SystemExit(f"{spec}: no finished run of arm {arm!r} in {folder}/results.csv")
    return {int(r.seed): float(getattr(r, metric)) for r in rows.itertuples()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", help="FOLDER:ARM")
    parser.add_argument("other", help="FOLDER:ARM")
    parser.add_argument("--metric", default="test_acc", choices=sorted(METRIC_BY_NAME))
    args = parser.parse_args()
    reference, other = by_seed(args.reference, args.metric), by_seed(args.other, args.metric)
    seeds = sorted(set(reference) & set(other))
    result = compare_arms({s: reference[s] for s in seeds}, {s: other[s] for s in seeds})
    shown = METRIC_BY_NAME[args.metric].show
    interval = result.paired_difference_t_ci
    p_value = result.paired_t.p_value
    print(
        f"{args.other} vs {args.reference}, {args.metric}, seeds {seeds}: {shown(result.mean_other)} vs "
        f"{shown(result.mean_reference)}, difference {shown(result.difference)}, paired 95% CI "
        + ("n/a" if interval is None else f"[{shown(interval[0])}, {shown(interval[1])}]")
        + f", paired t p {'n/a' if p_value is None else f'{p_value:.3g}'}"
    )


if __name__ == "__main__":
    main()
