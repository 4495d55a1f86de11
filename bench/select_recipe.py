"""Choose among the pruned arms of a ``lightning-prune compare`` folder by validation accuracy, not test accuracy.

The rule, fixed before looking: each arm's score is the mean over seeds of its validation accuracy after the last
epoch (``val_acc`` in ``curves.csv``, measured on the validation split carved out of the training data); the
candidate with the highest score is chosen. The test set of the same seeds is not read, so a later test of the
chosen recipe on fresh seeds (``compare --first-seed``) is an independent confirmation.

    python bench/select_recipe.py runs/mnist_main --candidates pruned every1 magnitude
"""

import argparse
from pathlib import Path

import pandas as pd

from lightning_prune.compare.stats import describe


def final_validation_accuracy(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per run (arm, seed): the validation accuracy after its last epoch, in percent."""
    logged = curves[curves["val_acc"].notna()]
    last = logged.loc[logged.groupby(["arm", "seed"])["epoch"].idxmax()]
    return last.assign(val_acc=100 * last["val_acc"])[["arm", "seed", "epoch", "val_acc"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a compare output folder (with curves.csv)")
    parser.add_argument("--candidates", nargs="+", required=True, metavar="ARM", help="the arms to choose among")
    options = parser.parse_args()

    finals = final_validation_accuracy(pd.read_csv(options.folder / "curves.csv"))
    missing = sorted(set(options.candidates) - set(finals["arm"]))
    if missing:
        parser.error(f"argument --candidates: no validation accuracy for {', '.join(missing)} in {options.folder}")
    print("| arm | seeds | final epoch | validation accuracy (%) | 95% t-interval | candidate |")
    print("|---|---|---|---|---|---|")
    scores = {}
    for arm, rows in finals.groupby("arm", sort=False):
        stats = describe(rows["val_acc"].tolist())
        interval = "n/a" if stats.t_ci is None else f"[{stats.t_ci[0]:.2f}, {stats.t_ci[1]:.2f}]"
        candidate = arm in options.candidates
        if candidate:
            scores[arm] = stats.mean
        epochs = "/".join(str(int(e)) for e in sorted(set(rows["epoch"])))
        print(f"| {arm} | {stats.n} | {epochs} | {stats.mean:.2f} | {interval} | {'yes' if candidate else ''} |")
    chosen = max(scores, key=scores.get)
    print(f"\nchosen on validation accuracy: {chosen} ({scores[chosen]:.2f}%)")


if __name__ == "__main__":
    main()
