"""``lightning-prune compare``: statistics against hand-computed values, resume, a tiny comparison end to end."""

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import wandb
from lightning.pytorch.callbacks import Callback
from nbclient import NotebookClient
from scipy import special

from lightning_prune import experiment
from lightning_prune.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
NOTEBOOK = ROOT / "notebooks" / "results.ipynb"
TINY = ["--data.val_size", "16", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1"]  # fmt: skip
PNGS = ("accuracy_vs_sparsity.png", "sparsity_ratio_per_epoch.png", "loss_curves.png", "flops_latency.png")


def compare_args(data_dir: Path, output: Path, *extra: str) -> list[str]:
    return ["compare", "--config", str(CONFIGS / "mnist_cnn.yaml"), "--prune-config", str(CONFIGS / "prune.yaml"),
            "--output", str(output), "--data.data_dir", str(data_dir), *TINY, *extra]  # fmt: skip


@pytest.fixture(autouse=True)
def fresh_wandb():
    yield
    wandb.finish()
    # W&B's service process resolves relative paths against its own working directory: start a fresh one
    wandb.teardown()


# -- statistics: hand-computed values ---------------------------------------------------------------------------------


def two_sided_t_p(t: float, df: float) -> float:
    """P(|T| > t) for Student's t with df degrees of freedom: the regularised incomplete beta I_x(df/2, 1/2),
    x = df / (df + t^2)."""
    return special.betainc(df / 2, 0.5, df / (df + t * t))


def test_t_interval_matches_the_t_table():
    low, high = experiment.t_interval([1.0, 2.0, 3.0])
    # mean 2, s = 1, n = 3, t_{0.975, 2} = 4.3027 (table value)
    assert (low + high) / 2 == pytest.approx(2.0)
    assert (high - low) / 2 == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    assert experiment.t_interval([4.0, 4.0]) == (4.0, 4.0)
    assert experiment.t_interval([4.0]) is None


def test_welch_t_test_by_hand():
    # a: mean 2.5, var 5/3; b: mean 5, var 20/3; se^2 = 5/12 + 20/12 = 25/12
    result = experiment.welch_t_test([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0])
    assert result.statistic == pytest.approx(2.5 / math.sqrt(25 / 12))  # = sqrt(3)
    # Welch-Satterthwaite: (25/12)^2 / ((5/12)^2/3 + (20/12)^2/3) = 1875/425
    assert result.df == pytest.approx(1875 / 425)
    assert result.p_value == pytest.approx(two_sided_t_p(math.sqrt(3), 1875 / 425))
    equal = experiment.welch_t_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert (equal.statistic, equal.df) == (pytest.approx(3 / math.sqrt(2 / 3)), pytest.approx(4.0))


def test_paired_t_test_by_hand():
    # differences 1, 2, 2: mean 5/3, sd sqrt(1/3), t = (5/3) / (sqrt(1/3)/sqrt(3)) = 5, df 2
    result = experiment.paired_t_test({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 4.0, 2: 5.0})
    assert result.statistic == pytest.approx(5.0)
    assert result.df == 2
    # with 2 degrees of freedom P(|T| > t) = 1 - t / sqrt(t^2 + 2)
    assert result.p_value == pytest.approx(1 - 5 / math.sqrt(27))
    # pairs by seed, not by position: seed 3 has no partner and is left out
    shuffled = experiment.paired_t_test({2: 3.0, 0: 1.0, 1: 2.0, 3: 9.0}, {0: 2.0, 1: 4.0, 2: 5.0})
    assert shuffled.p_value == pytest.approx(result.p_value)
    # the interval of the differences: 5/3 +- t_{0.975, 2} * sqrt(1/3) / sqrt(3), t_{0.975, 2} = 4.302653
    low, high = experiment.compare_arms({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 4.0, 2: 5.0})["paired_difference_t_ci"]
    half = 4.302653 * math.sqrt(1 / 3) / math.sqrt(3)
    assert (low, high) == (pytest.approx(5 / 3 - half, abs=1e-5), pytest.approx(5 / 3 + half, abs=1e-5))


def test_mann_whitney_u_and_cohens_d_by_hand():
    result = experiment.mann_whitney_u([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    # every b above every a: U_b = 9; exact two-sided p = 2 / C(6, 3) = 0.1
    assert result.statistic == 9.0
    assert result.p_value == pytest.approx(0.1)
    assert experiment.cohens_d([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]).statistic == pytest.approx(3.0)
    # pooled var = (3 * 5/3 + 3 * 20/3) / 6 = 25/6; d = 2.5 / sqrt(25/6) = sqrt(1.5)
    assert experiment.cohens_d([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0]).statistic == pytest.approx(math.sqrt(1.5))


def test_bootstrap_interval_is_reproducible_and_sane():
    values = [0.91, 0.93, 0.92, 0.95, 0.90]
    low, high = experiment.bootstrap_interval(values)
    assert (low, high) == experiment.bootstrap_interval(values)  # fixed seed
    assert min(values) <= low < sum(values) / len(values) < high <= max(values)
    assert experiment.bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert experiment.bootstrap_interval([0.5]) is None


def test_no_test_is_possible_says_so_instead_of_nan():
    for result in (
        experiment.welch_t_test([1.0], [2.0, 3.0]),
        experiment.mann_whitney_u([1.0], [2.0, 3.0]),
        experiment.paired_t_test({0: 1.0}, {0: 2.0}),
    ):
        assert result.p_value is None and "fewer than 2 seeds" in result.note
    assert "zero variance" in experiment.welch_t_test([1.0, 1.0], [2.0, 2.0]).note
    assert "zero variance" in experiment.paired_t_test({0: 1.0, 1: 2.0}, {0: 2.0, 1: 3.0}).note
    assert experiment.mann_whitney_u([1.0, 1.0], [1.0, 1.0]).p_value is None
    assert experiment.cohens_d([1.0, 1.0], [2.0, 2.0]).statistic is None
    assert experiment.describe([0.9]) == {"n": 1, "mean": 0.9, "std": None, "t_ci": None, "bootstrap_ci": None,
                                          "note": "one seed: no interval"}  # fmt: skip
    assert experiment.describe([float("nan")])["note"] == "no finished run"
    compared = experiment.compare_arms({0: 0.5}, {0: 0.4})
    assert compared["difference"] == pytest.approx(-0.1)
    assert compared["paired_t"]["p_value"] is None and compared["paired_t"]["note"]


def test_baseline_schedules_reach_the_target():
    # s_t = 0.9 * (1 - (1 - t/3)^3): 0.9 * 19/27, 0.9 * 26/27, 0.9
    assert experiment.gmp_sparsities(0.9, 3) == pytest.approx([0.9 * 19 / 27, 0.9 * 26 / 27, 0.9])
    # per step, of the remaining weights: 19/30, (0.9*7/27) / (1 - 0.9*19/27) = 7/11, (0.9/27) / (1 - 0.9*26/27) = 1/4
    amounts = experiment.amounts_from_sparsities(experiment.gmp_sparsities(0.9, 3))
    assert amounts == pytest.approx([19 / 30, 7 / 11, 1 / 4])
    for schedule in (amounts, experiment.uniform_amounts(0.9, 3)):
        assert 1 - math.prod(1 - a for a in schedule) == pytest.approx(0.9)
    assert experiment.uniform_amounts(0.9, 3) == pytest.approx([1 - 0.1 ** (1 / 3)] * 3)
    # the callback's default window: epochs before 80% of max_epochs
    assert experiment.pruning_epochs(2) == [0]
    assert experiment.pruning_epochs(5, start_epoch=1) == [1, 2, 3]
    assert experiment.baseline_schedule("modelpruning", 0.5, [3]) == {3: pytest.approx(0.5)}


def test_pruning_overrides_reach_only_the_pruned_arm():
    overrides = ["--pruning.target_sparsity", "0.5", "--trainer.max_epochs", "3", "--pruning.mode=structured"]
    assert experiment.without_pruning_options(overrides) == ["--trainer.max_epochs", "3"]


# -- running comparisons ----------------------------------------------------------------------------------------------


class Interrupter(Callback):
    """Ctrl-C in the middle of a fit."""

    def on_train_epoch_start(self, trainer, pl_module):
        raise KeyboardInterrupt


def read_statuses(output: Path) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in (output / "runs").glob("*/status.json")}


def test_crashed_and_interrupted_runs_are_recorded_and_the_rerun_resumes(tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "resume"
    real = experiment.train_and_test
    calls, failures = [], {"pruned-seed0": "crash", "unpruned-seed1": "interrupt"}

    def flaky(cli, spec):
        calls.append(spec.name)
        failure = failures.pop(spec.name, None)  # each fails once
        if failure == "crash":
            raise RuntimeError("boom")
        if failure == "interrupt":
            cli.trainer.callbacks.append(Interrupter())
        return real(cli, spec)

    monkeypatch.setattr(experiment, "train_and_test", flaky)
    sigint = signal.getsignal(signal.SIGINT)

    with pytest.raises(SystemExit) as crashed:
        main(compare_args(tiny_mnist, output, "--seeds", "1", "--no-wandb"))
    assert crashed.value.code == 1
    assert calls == ["unpruned-seed0", "pruned-seed0"]
    statuses = read_statuses(output)
    assert statuses["unpruned-seed0"]["status"] == "finished"
    assert statuses["pruned-seed0"]["status"] == "crashed" and "RuntimeError: boom" in statuses["pruned-seed0"]["error"]
    results = pd.read_csv(output / "results.csv")
    assert results.set_index("arm")["status"].to_dict() == {"unpruned": "finished", "pruned": "crashed"}
    assert "Runs that did not finish" in (output / "report.md").read_text()

    calls.clear()
    main(compare_args(tiny_mnist, output, "--seeds", "1", "--no-wandb"))
    assert calls == ["pruned-seed0"]  # the finished run is skipped
    assert read_statuses(output)["pruned-seed0"]["attempts"] == 2
    assert "finished earlier, skipped" in capsys.readouterr().err

    calls.clear()
    with pytest.raises(SystemExit) as interrupted:
        main(compare_args(tiny_mnist, output, "--seeds", "2", "--no-wandb"))
    assert interrupted.value.code == 130
    assert calls == ["unpruned-seed1"]  # the comparison stops at the interrupted run
    assert read_statuses(output)["unpruned-seed1"]["status"] == "interrupted"
    assert "pruned-seed1" not in read_statuses(output)
    assert signal.getsignal(signal.SIGINT) == sigint  # Ctrl-C works again after Lightning ignored it

    calls.clear()
    main(compare_args(tiny_mnist, output, "--seeds", "2", "--no-wandb"))
    assert calls == ["unpruned-seed1", "pruned-seed1"]
    assert {s["status"] for s in read_statuses(output).values()} == {"finished"}
    assert len(pd.read_csv(output / "results.csv")) == 4

    # the folder holds one comparison: other settings are refused rather than mixed in
    with pytest.raises(SystemExit) as refused:
        main(compare_args(tiny_mnist, output, "--seeds", "2", "--no-wandb", "--model.lr", "0.01"))
    assert refused.value.code == 2
    assert "--output" in capsys.readouterr().err


@pytest.fixture(scope="module")
def comparison(tiny_mnist, tmp_path_factory) -> Path:
    """A 2-seed comparison of the unpruned, pruned and GMP arms, logging to W&B offline."""
    output = tmp_path_factory.mktemp("compare") / "tiny-mnist"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(output.parent)
        main(compare_args(tiny_mnist, output, "--seeds", "2", "--baseline", "gmp"))
    wandb.finish()
    wandb.teardown()
    return output


def test_extra_arms_are_the_pruned_arm_plus_their_options(tiny_mnist, tmp_path, capsys):
    output = tmp_path / "arms"
    arm = "t30=--pruning.target_sparsity 0.3 --pruning.normalize_per_layer=false"
    main(compare_args(tiny_mnist, output, "--seeds", "1", "--no-wandb", "--arm", arm))
    results = pd.read_csv(output / "results.csv").set_index("arm")
    assert list(results.index) == ["unpruned", "pruned", "t30"]
    # one interval in the window: the pruned arm goes as far as max_ratio 0.5 allows, t30 stops at its own target
    assert results.loc["pruned", "sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert results.loc["t30", "sparsity"] == pytest.approx(0.3, abs=1e-3)
    config = next((output / "runs/t30-seed0").rglob("config.yaml")).read_text()
    assert "normalize_per_layer: false" in config and "target_sparsity: 0.3" in config
    summary = json.loads((output / "summary.json").read_text())
    pairs = [(c["arm"], c["reference"]) for c in summary["comparisons"]]
    assert pairs == [("pruned", "unpruned"), ("t30", "unpruned"), ("pruned", "t30")]
    # the arms are part of the comparison's settings: another arm in the same folder is refused
    with pytest.raises(SystemExit) as error:
        main(compare_args(tiny_mnist, output, "--seeds", "1", "--no-wandb", "--arm", "t4=--pruning.target_sparsity=.4"))
    assert error.value.code == 2 and "arms differ" in capsys.readouterr().err


def test_comparison_writes_results_curves_summary_report_and_plots(comparison):
    results = pd.read_csv(comparison / "results.csv")
    assert sorted(zip(results["arm"], results["seed"], strict=True)) == [
        ("gmp", 0), ("gmp", 1), ("pruned", 0), ("pruned", 1), ("unpruned", 0), ("unpruned", 1)
    ]  # fmt: skip
    assert set(results["status"]) == {"finished"}
    for metric in experiment.METRICS:
        assert results[metric.name].notna().all(), metric.name
    sparsity = results.groupby("arm")["sparsity"].mean()
    assert sparsity["unpruned"] == 0 and sparsity["pruned"] > 0
    assert sparsity["gmp"] == pytest.approx(0.9, abs=1e-3)  # prune.yaml's target, in the pruned arm's window
    assert (results["params_nonzero"] <= results["params_total"]).all()

    curves = pd.read_csv(comparison / "curves.csv")
    assert len(curves) == 6 * 2
    assert curves.loc[curves["arm"] == "pruned", "ratio"].notna().all()
    assert curves.loc[curves["arm"] != "pruned", "ratio"].isna().all()
    # the same seed means the same initial weights and data order: before any cut, every arm trains alike
    first = curves[curves["epoch"] == 0].pivot(index="seed", columns="arm", values="train_loss")
    assert first["pruned"].tolist() == pytest.approx(first["unpruned"].tolist())
    assert first["gmp"].tolist() == pytest.approx(first["unpruned"].tolist())

    summary = json.loads((comparison / "summary.json").read_text())
    assert summary["arms"] == ["unpruned", "pruned", "gmp"]
    assert summary["primary_test"]["name"] == "paired t-test"
    pairs = [(c["arm"], c["reference"]) for c in summary["comparisons"]]
    assert pairs == [("pruned", "unpruned"), ("gmp", "unpruned"), ("pruned", "gmp")]
    accuracy = summary["per_arm"]["pruned"]["test_acc"]
    assert accuracy["n"] == 2 and len(accuracy["t_ci"]) == 2 and len(accuracy["bootstrap_ci"]) == 2
    test = summary["comparisons"][0]["metrics"]["flops_effective"]
    assert test["n_pairs"] == 2 and all(k in test for k in ("paired_t", "welch_t", "mann_whitney_u", "cohens_d"))
    assert "NaN" not in (comparison / "summary.json").read_text()

    report = (comparison / "report.md").read_text()
    for text in ("95% confidence interval", "paired t p (primary)", "Welch t p", "Mann-Whitney U p", "Cohen's d",
                 "### pruned vs unpruned", "### gmp vs unpruned", "### pruned vs gmp", "paired t-test",
                 "### Test accuracy, every pair", "| gmp vs unpruned | 90.00 vs 0.00 |"):  # fmt: skip
        assert text in report, text
    assert " ± " in report and "nan" not in report.lower()
    for png in PNGS:
        assert (comparison / png).stat().st_size > 10_000, png
        assert f"]({png})" in report


def test_comparison_runs_are_grouped_in_wandb_with_arm_and_seed(comparison):
    for arm, seed in (("pruned", 0), ("gmp", 1)):
        run_file = next((comparison / f"runs/{arm}-seed{seed}/wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
        # protobuf keeps strings as plain text: the group, the run name and the config keys
        for text in (b"tiny-mnist", f"{arm}-seed{seed}".encode(), b"arm", b"seed"):
            assert text in run_file, text
    summary_run = next((comparison / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
    for text in (b"summary", b"summary/arms", b"summary/tests", b"plots/accuracy_vs_sparsity"):
        assert text in summary_run, text


def test_results_notebook_runs_on_a_comparison(comparison, monkeypatch, tmp_path):
    monkeypatch.setenv("LIGHTNING_PRUNE_RESULTS", str(comparison))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "paired t p (primary)" in html and "tiny-mnist" in "".join(o.get("text", "") for o in outputs)


# -- arguments ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--seeds": "0"}, "argument --seeds: must be at least 1"),
        ({"--config": "missing.yaml"}, "argument --config: file not found: missing.yaml"),
        ({"--prune-config": "missing.yaml"}, "argument --prune-config: file not found"),
        ({"--baseline": "magic"}, "argument --baseline: invalid choice: 'magic'"),
        ({"--baseline": "gmp", "--pruning.target_sparsity": "null"}, "argument --baseline: gmp prunes to the pruned"),
        ({"--seed_everything": "3"}, "argument --seed_everything: set by `compare`"),
        ({"--arm": "pruned=--pruning.max_ratio=0.7"}, "argument --arm: 'pruned=--pruning.max_ratio=0.7': 'pruned' is"),
        ({"--arm": "wide"}, "argument --arm: 'wide': no options after wide="),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(change, message, tmp_path, capsys):
    args = {"--config": str(CONFIGS / "mnist_cnn.yaml"), "--prune-config": str(CONFIGS / "prune.yaml"),
            "--output": str(tmp_path / "out"), "--no-wandb": None, **change}  # fmt: skip
    argv = ["compare", *[token for key, value in args.items() for token in (key, value) if token is not None]]
    with pytest.raises(SystemExit) as error:
        main(argv)
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage: lightning-prune compare" in err
    assert not (tmp_path / "out" / "runs").exists()


def test_prune_config_is_required(capsys):
    with pytest.raises(SystemExit) as error:
        main(["compare", "--config", str(CONFIGS / "mnist_cnn.yaml")])
    assert error.value.code == 2
    assert "--prune-config" in capsys.readouterr().err


def test_compare_help_from_the_console_script():
    script = Path(sys.executable).parent / "lightning-prune"
    result = subprocess.run([str(script), "compare", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    for text in ("usage: lightning-prune compare", "--prune-config", "--seeds", "--baseline", "--no-wandb", "resumes"):
        assert text in result.stdout, text
