"""A pass over a comparison's runs: which runs this process takes (``--shard``), claiming each before running it
(``claims``), resuming (a run finished by the same code and config is never run again), and reading every run's
record back from disk for the report (``collect``).

Several processes may make passes over one folder at once: ``--jobs`` workers, ``--shard`` processes, or two plain
``compare`` commands. Claims make each run's training happen in one process at a time; ``status.json`` says which
finished.
"""

import time
from dataclasses import dataclass
from typing import Any

from lightning_prune.cli.progress import format_duration
from lightning_prune.compare import provenance
from lightning_prune.compare.claims import DEFAULT_TIMEOUT_S, Claim, ClaimInfo, Owner, State, claim, inspect
from lightning_prune.compare.runner import Comparison, RunSpec, run_and_record, say
from lightning_prune.compare.status import RunStatus, read_status

FINISHED, RUNNING, STALE = RunStatus.FINISHED, RunStatus.RUNNING, RunStatus.STALE


@dataclass(frozen=True)
class Share:
    """Which runs of the plan this process takes and how it claims them: ``--shard index/count`` (0-based; None for
    the whole plan), the claims' timeout, and the worker's name under ``--jobs`` (in its claims)."""

    shard: tuple[int, int] | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    worker: str = ""

    def takes(self, position: int) -> bool:
        """Whether the run at ``position`` (0-based, in plan order) is this process's."""
        return self.shard is None or position % self.shard[1] == self.shard[0]

    @property
    def label(self) -> str:
        return "" if self.shard is None else f"{self.shard[0]}/{self.shard[1]}"


def current_state(comparison: Comparison) -> dict[str, Any]:
    """The code and versions of now, which a finished run must match to count (``provenance.stale_reasons``)."""
    return {**provenance.code_state(comparison.output), **provenance.versions()}


def stale_reasons(spec: RunSpec, previous: dict[str, Any] | None, current: dict[str, Any]) -> str | None:
    """Why a finished run was made by other code or config than now ('' when it was not); None when not finished."""
    if previous is None or previous.get("status") != FINISHED:
        return None
    return "; ".join(provenance.stale_reasons(previous, {**current, "config_hash": spec.config_hash}))


def done_record(
    spec: RunSpec, previous: dict[str, Any] | None, current: dict[str, Any], reuse_stale: bool
) -> tuple[dict[str, Any] | None, str]:
    """A run's record when it is done: finished by the same code and config (or by other ones, with
    ``reuse_stale``, then marked ``reused_stale``); None when it must run (again). And why, in words."""
    stale = stale_reasons(spec, previous, current)
    if previous is None or stale is None:
        return None, ""
    if not stale:
        return previous, "finished earlier, skipped"
    if reuse_stale:
        return {**previous, "reused_stale": stale}, f"finished earlier by other code or config ({stale}), reused " \
                                                     "(--reuse-stale)"  # fmt: skip
    return None, f"finished earlier by other code or config ({stale}): running it again"


def _placeholder(spec: RunSpec, status: str) -> dict[str, Any]:
    return {"arm": spec.arm.name, "seed": spec.seed, "status": status, "run_dir": str(spec.directory)}


class _Pass:
    """One process's pass: its owner (for its claims), the state runs must match, the durations (for the ETA)."""

    def __init__(self, comparison: Comparison, share: Share) -> None:
        self.comparison, self.share = comparison, share
        self.specs = comparison.specs()
        self.owner = Owner.me(share.label, share.worker)
        self.current = current_state(comparison)
        self.durations: list[float] = []

    def claims(self, spec: RunSpec) -> ClaimInfo:
        return inspect(spec.claims, self.share.timeout)

    def take(self, position: int, next_ones: list[int]) -> dict[str, Any]:
        """Run the run at ``position`` unless it is done or another live process holds it; its record. The ETA counts
        the unfinished runs among ``next_ones``, this one's included."""
        spec = self.specs[position]
        where = f"run {position + 1}/{len(self.specs)}: {spec.arm.name}, seed {spec.seed}"
        record, note = done_record(spec, read_status(spec.directory), self.current, self.comparison.reuse_stale)
        if note:
            say(f"{where}: {note}")
        if record is not None:
            return record
        taken = claim(spec.claims, self.owner, self.share.timeout)
        if not isinstance(taken, Claim):
            say(f"{where}: {taken.describe()}: left to it")
            return _placeholder(spec, RUNNING)
        outcome = RunStatus.INTERRUPTED.value
        try:
            # looked at before the claim: another process may have finished it in between
            previous = read_status(spec.directory)
            record, _ = done_record(spec, previous, self.current, self.comparison.reuse_stale)
            if record is not None:
                say(f"{where}: finished by another process meanwhile, skipped")
                outcome = "skipped"
                return record
            if taken.previous.state is State.STALE and taken.previous.owner is not None:
                say(f"{where}: taken over from {taken.previous.owner.describe()}: {taken.previous.why}")
            eta = "ETA after this run"
            if self.durations:
                statuses = [(read_status(self.specs[p].directory) or {}).get("status") for p in next_ones]
                left = sum(1 for status in statuses if status != FINISHED)
                eta = f"ETA {format_duration(left * sum(self.durations) / len(self.durations))}"
            say(f"{where} ({eta})")
            start = time.perf_counter()
            record = run_and_record(spec, previous, taken)
            self.durations.append(time.perf_counter() - start)
            outcome = record["status"]
            say(f"{where}: {record['status']} in {format_duration(self.durations[-1])}" + _headline(record))
            return record
        finally:
            taken.release(outcome)


def run_comparison(comparison: Comparison, share: Share | None = None) -> list[dict[str, Any]]:
    """Run every run of ``share`` (all of them by default) that has not finished, claiming each first; then take the
    runs of any share whose claim is stale (their claimant died). Return the records of the runs looked at, in plan
    order; a run another live process holds has status ``running``.

    A crashed run is recorded (``status: crashed`` with the traceback) and the pass goes on. An interrupted one is
    recorded, its claim released, and the KeyboardInterrupt propagates.

    Raises:
        KeyboardInterrupt: A run was interrupted.
    """
    share = share or Share()
    one = _Pass(comparison, share)
    records: dict[int, dict[str, Any]] = {}
    mine = [position for position in range(len(one.specs)) if share.takes(position)]
    for done, position in enumerate(mine):
        records[position] = one.take(position, mine[done:])
    # a claimant that died leaves its runs claimed: take them whoever's share they were (runs of a shard that never
    # claimed them stay its own, for its next pass)
    for position, spec in enumerate(one.specs):
        if records.get(position, {}).get("status") != FINISHED and one.claims(spec).state is State.STALE:
            records[position] = one.take(position, [position])
    return [records[position] for position in sorted(records)]


def collect(comparison: Comparison, timeout: float = DEFAULT_TIMEOUT_S) -> tuple[list[dict[str, Any]], list[str]]:
    """Every planned run's record as it is on disk, in plan order, and, in words, the runs that have not finished
    (a run finished by other code or config counts only with ``reuse_stale``, as on resume)."""
    current = current_state(comparison)
    records, missing = [], []
    for spec in comparison.specs():
        previous = read_status(spec.directory)
        record, _ = done_record(spec, previous, current, comparison.reuse_stale)
        if record is not None:
            records.append(record)
            continue
        stale = stale_reasons(spec, previous, current)
        info = inspect(spec.claims, timeout)
        if info.state is State.LIVE:
            state, record = info.describe(), _placeholder(spec, RUNNING)
        elif previous is None:
            state, record = "not started", _placeholder(spec, "not started")
        elif stale:
            state, record = f"finished by other code or config ({stale})", {**previous, "status": STALE}
        else:
            state, record = str(previous.get("status")), previous
        if info.state is State.STALE:
            state += f" (its claim is stale: {info.why})"
        records.append(record)
        missing.append(f"{spec.arm.name}, seed {spec.seed}: {state}")
    return records, missing


def _headline(record: dict[str, Any]) -> str:
    if record["status"] != FINISHED:
        last = record.get("error", "").strip().splitlines()
        return f": {last[-1]}" if last else ""
    return f", test accuracy {_percent(record.get('test_acc'))}, sparsity {_percent(record.get('sparsity'))}"


def _percent(value: Any) -> str:
    """A fraction as a percentage with two decimals: 0.900600016 -> '90.06%'.

    Example:
        >>> _percent(0.900600016117096), _percent(None)
        ('90.06%', 'n/a')
    """
    return "n/a" if not isinstance(value, (int, float)) or value != value else f"{value * 100:.2f}%"
