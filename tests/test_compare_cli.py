"""``lightning-prune compare``'s command line: the baselines it plans, which options reach which arm, bad arguments."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_prune.cli import main
from lightning_prune.compare import baselines
from lightning_prune.compare.cli import build_parser
from lightning_prune.compare.plan import plan_comparison, without_pruning_options
from lightning_prune.schedule import PruningWindow

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_baseline_schedules_reach_the_target():
    # s_t = 0.9 * (1 - (1 - t/3)^3): 0.9 * 19/27, 0.9 * 26/27, 0.9
    assert baselines.gmp_sparsities(0.9, 3) == pytest.approx([0.9 * 19 / 27, 0.9 * 26 / 27, 0.9])
    # per step, of the remaining weights: 19/30, (0.9*7/27) / (1 - 0.9*19/27) = 7/11, (0.9/27) / (1 - 0.9*26/27) = 1/4
    amounts = baselines.amounts_from_sparsities(baselines.gmp_sparsities(0.9, 3))
    assert amounts == pytest.approx([19 / 30, 7 / 11, 1 / 4])
    for schedule in (amounts, baselines.uniform_amounts(0.9, 3)):
        assert 1 - math.prod(1 - a for a in schedule) == pytest.approx(0.9)
    assert baselines.uniform_amounts(0.9, 3) == pytest.approx([1 - 0.1 ** (1 / 3)] * 3)
    # the callback's default window: epochs before 80% of max_epochs
    assert PruningWindow().decision_epochs(2) == [0]
    assert PruningWindow(start_epoch=1).decision_epochs(5) == [1, 2, 3]
    assert baselines.baseline_schedule("modelpruning", 0.5, [3]) == {3: pytest.approx(0.5)}


def test_pruning_overrides_reach_only_the_pruned_arm():
    overrides = ["--pruning.target_sparsity", "0.5", "--trainer.max_epochs", "3", "--pruning.mode=structured"]
    assert without_pruning_options(overrides) == ["--trainer.max_epochs", "3"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--seeds": "0"}, "argument --seeds: must be at least 1"),
        ({"--first-seed": "-1"}, "argument --first-seed: must be 0 or more"),
        ({"--baseline": "gmp@1.5"}, "argument --baseline: 'gmp@1.5': the target after @ must be a sparsity in (0, 1)"),
        ({"--baseline": "gmp@high"}, "argument --baseline: 'gmp@high': the target after @ must be a sparsity"),
        ({"--baseline": "gmp@0.5", "--arm": "gmp_0.5=--pruning.max_ratio=0.7"}, "an arm has the name of a baseline"),
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


def test_first_seed_plans_fresh_seeds_for_a_confirmation(tmp_path):
    parser = build_parser()
    argv = ["--config", str(CONFIGS / "mnist_cnn.yaml"), "--prune-config", str(CONFIGS / "prune.yaml"),
            "--output", str(tmp_path / "confirm"), "--no-wandb", "--seeds", "2", "--first-seed", "5"]  # fmt: skip
    options, overrides = parser.parse_known_args(argv)
    comparison = plan_comparison(parser, options, overrides)
    assert comparison.seeds == [5, 6]
    assert sorted(spec.directory.name for spec in comparison.specs()) == [
        "pruned-seed5", "pruned-seed6", "unpruned-seed5", "unpruned-seed6"]  # fmt: skip


def test_a_sweep_of_fixed_schedules_each_at_its_own_target_beside_a_guarded_arm(tmp_path):
    parser = build_parser()
    argv = ["--config", str(CONFIGS / "mnist_cnn.yaml"), "--prune-config", str(CONFIGS / "prune.yaml"),
            "--output", str(tmp_path / "sweep"), "--no-wandb", "--trainer.max_epochs", "5",
            "--pruning.target_sparsity", "null", "--pruning.guard", "val_acc",
            "--baseline", "gmp@0.5", "--baseline", "gmp@0.95", "--baseline", "modelpruning@0.9"]  # fmt: skip
    options, overrides = parser.parse_known_args(argv)
    comparison = plan_comparison(parser, options, overrides)
    schedules = {arm.name: arm.schedule for arm in comparison.arms}
    assert list(schedules) == ["unpruned", "pruned", "gmp_0.5", "gmp_0.95", "modelpruning_0.9"]
    assert sorted(schedules["gmp_0.95"]) == PruningWindow().decision_epochs(5) == [0, 1, 2, 3]
    for name, target in (("gmp_0.5", 0.5), ("gmp_0.95", 0.95), ("modelpruning_0.9", 0.9)):
        assert 1 - math.prod(1 - a for a in schedules[name].values()) == pytest.approx(target)


def test_planning_from_the_command_line_does_not_warn_of_its_own_options(tmp_path, monkeypatch, recwarn):
    argv = ["--config", str(CONFIGS / "mnist_cnn.yaml"), "--prune-config", str(CONFIGS / "prune.yaml"),
            "--output", str(tmp_path / "out"), "--no-wandb", "--seeds", "1"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["lightning-prune", "compare", *argv])  # what the console script sees
    parser = build_parser()
    options, overrides = parser.parse_known_args(argv)
    plan_comparison(parser, options, overrides)
    assert not [w for w in recwarn if "args parameter" in str(w.message)]
    assert sys.argv[1] == "compare"  # given back
