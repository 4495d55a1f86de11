"""``lightning-prune compare``'s command line: the parser, ``--arm``, ``compare_main`` (planning: ``plan.py``)."""

import argparse
import json
import math
import re
import shlex

from lightning_prune.cli.wandb_mode import choose_wandb_mode
from lightning_prune.compare.baselines import BASELINES
from lightning_prune.compare.claims import DEFAULT_TIMEOUT_S
from lightning_prune.compare.passes import FINISHED, Share, collect, run_comparison
from lightning_prune.compare.plan import plan_comparison
from lightning_prune.compare.report import write_outputs_locked, write_outputs_once
from lightning_prune.compare.results import write_json
from lightning_prune.compare.runner import (
    Comparison,
    say,
)
from lightning_prune.compare.stats import OTHER_MARGIN
from lightning_prune.compare.status import PRUNED, UNPRUNED, RunStatus, read_status
from lightning_prune.compare.workers import cpu_cores, plan_workers, run_workers, visible_devices

SETTINGS_FILE = "comparison.json"
PASSED_THROUGH = "Any other option (--trainer.*, --data.*, --model.*, --optimizer.*, ...) goes to every arm."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-prune compare",
        description="Train the unpruned and the pruned arm (and optional baselines) with the same seeds, data and\n"
        "hyperparameters; test and profile the final models; compare them with statistical tests (paired t-test\n"
        "over seeds first); write OUTPUT/results.csv, curves.csv, summary.json, report.md and PNG plots.",
        epilog=f"{PASSED_THROUGH}\n--pruning.* options go to the pruned arm only.\n\nExample:\n"
        "  lightning-prune compare --config configs/mnist_cnn.yaml --prune-config configs/prune.yaml \\\n"
        "      --seeds 5 --output runs/mnist --baseline gmp --trainer.max_epochs 10\n\n"
        "Each run lives in OUTPUT/runs/<arm>-seed<k>/ with a status.json. Re-running the same command resumes:\n"
        "finished runs of the same commit, code and config are skipped; crashed, interrupted or stale ones run again\n"
        "(--reuse-stale keeps stale ones).\n\n"
        "Spreading a comparison: --jobs N runs N runs at once on this machine; --shard I/N on N machines or\n"
        "scheduler jobs (e.g. a SLURM array) sharing OUTPUT. Every process claims a run (OUTPUT/claims/) before\n"
        "training it, so no run is trained twice; a dead process's claimed runs are taken again.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --data.* and friends must not be mistaken for our options
    )
    parser.add_argument("--config", action="append", required=True, metavar="YAML",
                        help="task config(s) as for `lightning-prune fit`, for every arm; repeatable")  # fmt: skip
    parser.add_argument("--prune-config", required=True, metavar="YAML",
                        help="the pruning recipe added for the pruned arm, e.g. configs/prune.yaml")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=5, metavar="N",
                        help="N seeds per arm, from --first-seed on (default: 5)")  # fmt: skip
    parser.add_argument("--first-seed", type=int, default=0, metavar="K",
                        help="the first seed (default: 0); e.g. --first-seed 5 confirms a recipe chosen on seeds 0-4 "
                        "on fresh seeds")  # fmt: skip
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="output folder, also the W&B group (default: runs/compare-<config name>)")  # fmt: skip
    parser.add_argument("--baseline", action="append", default=[], type=_baseline_option, metavar="NAME[@TARGET]",
                        help="extra arm at the pruned arm's target sparsity and window: Lightning's ModelPruning "
                        "(uniform global L1) or gmp (cubic gradual magnitude); NAME@TARGET prunes to TARGET "
                        "instead (arm NAME_TARGET: gmp@0.95 is gmp_0.95, for a sweep of fixed schedules); "
                        "repeatable")  # fmt: skip
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=OPTIONS", type=_arm_option,
                        help="extra pruned arm: the pruned arm's configuration plus OPTIONS, e.g. "
                        "--arm 'structured=--pruning.mode=structured' or --arm 't95=--pruning.target_sparsity=0.95'; "
                        "repeatable")  # fmt: skip
    parser.add_argument("--margin", type=float, default=None, metavar="M",
                        help="equivalence / non-inferiority margin of test accuracy, in percentage points: the report "
                        "tests equivalence within +-M (TOST) and non-inferiority by M (default: 0.1 for MNIST, 0.5 "
                        f"for CIFAR-10 and IMDB, {OTHER_MARGIN} for other data)")  # fmt: skip
    parser.add_argument("--reuse-stale", action="store_true",
                        help="on resume, keep finished runs made by another commit, code or config instead of running "
                        "them again; the report lists them")  # fmt: skip
    parser.add_argument("--no-wandb", action="store_true", help="log each run with a CSVLogger instead of W&B")
    parser.add_argument("--profile-threads", type=int, default=1, metavar="N",
                        help="CPU threads while timing the final model's latency (default: 1)")  # fmt: skip
    parallel = parser.add_argument_group("spreading a comparison over processes and machines")
    parallel.add_argument("--jobs", type=int, default=1, metavar="N",
                          help="run N runs at once on this machine, each in a worker process of its own: one CUDA "
                          "device each (at most --jobs-per-device workers a device), or on the CPU an equal share of "
                          "the cores (default: 1, in this process)")  # fmt: skip
    parallel.add_argument("--jobs-per-device", type=int, default=1, metavar="K",
                          help="with --jobs and CUDA devices, up to K workers on each device (default: 1)")  # fmt: skip
    parallel.add_argument("--shard", type=_shard_option, default=None, metavar="I/N",
                          help="take only the runs whose position in the plan modulo N is I, 0-based (I = 0..N-1, "
                          "e.g. $SLURM_ARRAY_TASK_ID/4), then any run whose claimant died; the shard that finds every "
                          "run finished writes the report")  # fmt: skip
    parallel.add_argument("--claim-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                          help="a claimed run whose heartbeat is older than this is taken again (its process died on "
                          f"another machine or stalled); a dead process on this machine is noticed at once (default: "
                          f"{DEFAULT_TIMEOUT_S:g})")  # fmt: skip
    parallel.add_argument("--report-only", action="store_true",
                          help="train nothing: write the report from the runs on disk; when some have not finished, "
                          "name them, write a report labelled partial and exit 1")  # fmt: skip
    return parser


def _shard_option(text: str) -> tuple[int, int]:
    """``I/N`` of ``--shard``, 0-based, as SLURM array task ids are from ``--array=0-(N-1)``.

    Example:
        >>> _shard_option("3/4")
        (3, 4)
    """
    index, slash, count = text.partition("/")
    if slash and index.strip().isdigit() and count.strip().isdigit() and int(index) < int(count):
        return int(index), int(count)
    raise argparse.ArgumentTypeError(f"{text!r}: expected I/N with 0 <= I < N, 0-based (--shard 0/4 to --shard 3/4, "
                                     "e.g. --shard $SLURM_ARRAY_TASK_ID/4)")  # fmt: skip


ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*")


def _arm_option(text: str) -> tuple[str, tuple[str, ...]]:
    """``NAME=OPTIONS`` of ``--arm``: the arm's name and its extra options, split like a shell would.

    Example:
        >>> _arm_option("structured=--pruning.mode structured --pruning.max_ratio=0.7")
        ('structured', ('--pruning.mode', 'structured', '--pruning.max_ratio=0.7'))
    """
    name, _, options = text.partition("=")
    if not ARM_NAME.fullmatch(name) or "-seed" in name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=OPTIONS with NAME made of letters, digits, _ and .")
    if name in (UNPRUNED, PRUNED, *BASELINES):
        raise argparse.ArgumentTypeError(f"{text!r}: {name!r} is a built-in arm; choose another name")
    split = tuple(shlex.split(options))
    if not split:
        raise argparse.ArgumentTypeError(f"{text!r}: no options after {name}=; an arm must differ from `pruned`")
    return name, split


def _baseline_option(text: str) -> tuple[str, float | None]:
    """``NAME`` or ``NAME@TARGET`` of ``--baseline``: the baseline and its own target sparsity (None: the pruned arm's).

    Example:
        >>> _baseline_option("gmp@0.95"), _baseline_option("modelpruning")
        (('gmp', 0.95), ('modelpruning', None))
    """
    name, at, target = text.partition("@")
    if name not in BASELINES:
        raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from {', '.join(BASELINES)})")
    if not at:
        return name, None
    try:
        value = float(target)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the target after @ must be a sparsity in (0, 1), got {target!r}")
    return name, value


def _check_resume(parser: argparse.ArgumentParser, comparison: Comparison) -> None:
    """A folder holds one comparison: resuming with other settings would mix runs that differ by more than the arm."""
    path = comparison.output / SETTINGS_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != comparison.settings:
            keys = {*saved, *comparison.settings}
            changed = sorted(key for key in keys if saved.get(key) != comparison.settings.get(key))
            parser.error(f"argument --output: {comparison.output} holds a comparison with other settings "
                         f"({', '.join(changed)} differ); choose another --output or remove the folder")  # fmt: skip
    write_json(path, comparison.settings)


def compare_main(argv: list[str]) -> None:
    """``lightning-prune compare``: see ``lightning-prune compare --help``.

    Raises:
        SystemExit: 2 for bad arguments, 1 when some runs crashed (their traceback is in their ``status.json``) or,
            with ``--report-only``, have not finished, 130 when interrupted; re-running the command resumes.
    """
    parser = build_parser()
    options, overrides = parser.parse_known_args(argv)
    comparison = plan_comparison(parser, options, overrides)
    comparison.command = ["lightning-prune", "compare", *argv]
    comparison.output.mkdir(parents=True, exist_ok=True)
    _check_resume(parser, comparison)
    share = Share(options.shard, options.claim_timeout)
    if options.report_only:
        _report_only(comparison, share)
        return
    if comparison.wandb:
        choose_wandb_mode()
    runs = len(comparison.arms) * len(comparison.seeds)
    mine = sum(1 for position in range(runs) if share.takes(position))
    say(f"{len(comparison.arms)} arms x {len(comparison.seeds)} seeds into {comparison.output}"
        + (f"; shard {share.label}: {mine} of the {runs} runs" if share.shard else ""))  # fmt: skip
    try:
        crashed_here = _run_pass(comparison, share, options.jobs, options.jobs_per_device)
    except KeyboardInterrupt:
        records = [read_status(spec.directory) for spec in comparison.specs()]
        write_outputs_locked(comparison, [r for r in records if r is not None], share.timeout, log_wandb=False)
        say("interrupted: re-run the same command to resume (finished runs are skipped)")
        raise SystemExit(130) from None
    if share.shard is not None:
        _finish_shard(comparison, share, crashed_here)
        return
    records, _ = collect(comparison, share.timeout)
    summary = write_outputs_locked(comparison, records, share.timeout)
    for warning in summary.warnings:
        say(f"warning: {warning}")
    say(f"report: {comparison.output / 'report.md'}")
    crashed = [f"{r['arm']}-seed{r['seed']}" for r in records if r["status"] != FINISHED]
    if crashed:
        say(f"{len(crashed)} run(s) did not finish ({', '.join(crashed)}): see their status.json; re-run to retry")
        raise SystemExit(1)


def _run_pass(comparison: Comparison, share: Share, jobs: int, per_device: int) -> bool:
    """This process's pass, in this process or ``jobs`` workers; whether a run it ran crashed."""
    if jobs == 1:
        return any(record["status"] == RunStatus.CRASHED for record in run_comparison(comparison, share))
    plans, notes = plan_workers(jobs, visible_devices(), cpu_cores(), per_device)
    for note in notes:
        say(note)
    return run_workers(comparison, share, plans) != 0


def _finish_shard(comparison: Comparison, share: Share, crashed_here: bool) -> None:
    """A shard writes the report when every planned run has finished (once, if shards finish together); otherwise it
    says which runs are left. Exits 1 when one of the runs it ran crashed."""
    records, missing = collect(comparison, share.timeout)
    if missing:
        say(f"{len(missing)} of {len(records)} runs have not finished yet; the process that finishes the last one "
            "writes the report (or run the same command with --report-only):")  # fmt: skip
        for run in missing:
            say(f"  {run}")
    else:
        written = write_outputs_once(comparison, records, share.timeout)
        if isinstance(written, str):
            say(f"every run has finished; the report is {written}: {comparison.output / 'report.md'}")
        else:
            for warning in written.warnings:
                say(f"warning: {warning}")
            say(f"every run has finished; report: {comparison.output / 'report.md'}")
    if crashed_here:
        say("a run of this process crashed: see its status.json; re-run to retry")
        raise SystemExit(1)


def _report_only(comparison: Comparison, share: Share) -> None:
    """``--report-only``: the report from the runs on disk; labelled partial, and exit 1, when some have not
    finished."""
    records, missing = collect(comparison, share.timeout)
    summary = write_outputs_locked(comparison, records, share.timeout, missing=missing)
    for warning in summary.warnings:
        say(f"warning: {warning}")
    if missing:
        say(f"partial report: {len(missing)} of {len(records)} runs have not finished:")
        for run in missing:
            say(f"  {run}")
        say(f"report (partial): {comparison.output / 'report.md'}")
        raise SystemExit(1)
    say(f"report: {comparison.output / 'report.md'}")
