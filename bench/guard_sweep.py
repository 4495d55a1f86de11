"""One guarded run against a sweep of fixed schedules, from one ``lightning-prune compare`` folder.

The folder holds an ``unpruned`` arm, a guarded arm (``target_sparsity: null``, ``guard: val_acc``) and fixed
schedules at several targets (``--baseline gmp@0.5 --baseline gmp@0.8 ...``). Per seed, the sweep's answer is the
highest target whose test accuracy stays within ``--max-drop`` points of the same seed's unpruned run; the guarded
run's answer is the sparsity it ended at. Issue 14's bar: the guarded run reaches at least the sweep's answer minus
``--slack`` points of sparsity, at a sixth of the sweep's compute. Every run here trains the same steps, so the
guarded run costs 1/N of an N-run sweep in optimizer steps; the training wall times are shown beside it.

    python bench/guard_sweep.py runs/mnist_guard --guard-arm pruned --max-drop 0.5
"""

import argparse
from pathlib import Path

import pandas as pd


def sweep_answer(runs: pd.DataFrame, sweep: list[str], unpruned_acc: float, max_drop: float) -> tuple[str, float]:
    """The sweep arm with the highest sparsity whose test accuracy is within ``max_drop`` points of unpruned."""
    kept = runs[runs["arm"].isin(sweep) & (100 * runs["test_acc"] >= 100 * unpruned_acc - max_drop)]
    if kept.empty:
        return "none", 0.0
    best = kept.loc[kept["sparsity"].idxmax()]
    return str(best["arm"]), float(best["sparsity"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a compare output folder (with results.csv)")
    parser.add_argument("--guard-arm", default="pruned", help="the guarded arm (default: pruned)")
    parser.add_argument("--sweep-prefix", default="gmp_", help="the sweep's arms start with this (default: gmp_)")
    parser.add_argument("--max-drop", type=float, default=0.5, help="points of test accuracy (default: 0.5)")
    parser.add_argument("--slack", type=float, default=2.0, help="points of sparsity (default: 2)")
    options = parser.parse_args()

    results = pd.read_csv(options.folder / "results.csv")
    runs = results[results["status"] == "finished"]
    sweep = sorted(arm for arm in runs["arm"].unique() if arm.startswith(options.sweep_prefix))
    if not sweep or options.guard_arm not in set(runs["arm"]):
        parser.error(
            f"{options.folder}: needs the arm {options.guard_arm!r} and arms starting {options.sweep_prefix!r}"
        )
    print(f"sweep: {', '.join(sweep)}; guarded arm: {options.guard_arm}; within {options.max_drop} points of unpruned")
    print(
        "\n| seed | unpruned acc (%) | sweep's answer | its acc (%) | guarded sparsity (%) | guarded acc (%) | "
        "guarded - sweep (points of sparsity) | bar met | wall time, guarded / sweep |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    met = []
    for seed, seed_runs in runs.groupby("seed"):
        arms = seed_runs.set_index("arm")
        if "unpruned" not in arms.index or options.guard_arm not in arms.index:
            continue
        unpruned_acc = float(arms.loc["unpruned", "test_acc"])
        name, sparsity = sweep_answer(seed_runs, sweep, unpruned_acc, options.max_drop)
        guarded = arms.loc[options.guard_arm]
        gap = 100 * (float(guarded["sparsity"]) - sparsity)
        compute = float(guarded["train_time_s"]) / float(arms.loc[arms.index.isin(sweep), "train_time_s"].sum())
        met.append(gap >= -options.slack)
        sweep_acc = f"{100 * float(arms.loc[name, 'test_acc']):.2f}" if name != "none" else "n/a"
        print(
            f"| {seed} | {100 * unpruned_acc:.2f} | {name} ({100 * sparsity:g}%) | {sweep_acc} | "
            f"{100 * float(guarded['sparsity']):.2f} | {100 * float(guarded['test_acc']):.2f} | {gap:+.2f} | "
            f"{'yes' if met[-1] else 'no'} | {compute:.3f} |"
        )
    steps = f"1/{len(sweep)} of the sweep's optimizer steps"
    bar = f"at least the sweep's answer - {options.slack:g} points"
    print(f"\nbar met ({bar}) in {sum(met)} of {len(met)} seeds, at {steps}")


if __name__ == "__main__":
    main()
