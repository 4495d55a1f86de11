"""``compare --jobs N``: N worker processes on one machine, each making a pass over the comparison
(``passes.run_comparison``) and taking runs one at a time through claims, so that no run is trained twice.

Workers are fresh interpreters (``python -m lightning_prune.compare.workers``, the plan pickled on their stdin), never
forks: torch and Lightning hold threads and CUDA state that a fork copies half-made. Each worker gets one CUDA device
(``CUDA_VISIBLE_DEVICES``) when there are devices, and an equal share of the CPU cores (``torch.set_num_threads`` and
``OMP_NUM_THREADS``) so that the workers do not oversubscribe them. Workers run in a session of their own: Ctrl-C
reaches the parent only, which passes one SIGINT to each worker (a second one would hit Lightning's shutdown); each
records its run as interrupted and releases its claim. Their output comes through the parent, every line prefixed
with the worker's name.
"""

import os
import pickle
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import lightning_prune
from lightning_prune.compare.passes import Share, run_comparison
from lightning_prune.compare.runner import Comparison, say
from lightning_prune.compare.status import RunStatus

INTERRUPTED = 130


@dataclass(frozen=True)
class WorkerPlan:
    """One worker: its name (the prefix of its lines, and in its claims), its CUDA device (an entry of
    ``CUDA_VISIBLE_DEVICES``; None on the CPU) and its CPU threads."""

    name: str
    device: str | None
    threads: int

    def describe(self) -> str:
        device = f"CUDA device {self.device}" if self.device is not None else "the CPU"
        return f"worker {self.name}: {device}, {self.threads} CPU thread(s)"


@dataclass(frozen=True)
class WorkerTask:
    """What a worker reads from its stdin."""

    comparison: Comparison
    share: Share
    plan: WorkerPlan


def visible_devices() -> list[str]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (the ones it lists, if set)."""
    import torch  # only when asked: the workers' parent needs no more of it

    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(index) for index in range(count)]
    return [entry.strip() for entry in listed.split(",") if entry.strip()][:count]


def cpu_cores() -> int:
    """The cores this process may run on (a scheduler's CPU binding counts, not the machine's cores)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def plan_workers(jobs: int, devices: list[str], cores: int, per_device: int = 1) -> tuple[list[WorkerPlan], list[str]]:
    """The workers of ``--jobs``: with CUDA devices at most ``per_device`` workers on each (``--jobs-per-device``),
    each on one; the cores split equally. And notes, in words, on what was capped.

    Example:
        >>> plans, notes = plan_workers(4, ["0", "1"], 16)
        >>> [(p.name, p.device, p.threads) for p in plans], notes
        ([('w1', '0', 8), ('w2', '1', 8)], ['--jobs 4: 2 worker(s), 1 per CUDA device (--jobs-per-device 2 for more)'])
        >>> [(p.device, p.threads) for p in plan_workers(3, ["0", "1"], 16, per_device=2)[0]]
        [('0', 5), ('1', 5), ('0', 5)]
        >>> plans, notes = plan_workers(3, [], 2)
        >>> [(p.name, p.device, p.threads) for p in plans], notes
        ([('w1', None, 1), ('w2', None, 1), ('w3', None, 1)], ['3 workers on 2 CPU cores: they share the cores'])
    """
    notes, count = [], jobs
    if devices and jobs > len(devices) * per_device:
        count = len(devices) * per_device
        notes.append(f"--jobs {jobs}: {count} worker(s), {per_device} per CUDA device (--jobs-per-device "
                     f"{per_device + 1} for more)")  # fmt: skip
    if count > cores:
        notes.append(f"{count} workers on {cores} CPU cores: they share the cores")
    threads = max(1, cores // count)
    plans = [WorkerPlan(f"w{index + 1}", devices[index % len(devices)] if devices else None, threads)
             for index in range(count)]  # fmt: skip
    return plans, notes


def _relay(stream: IO[bytes], prefix: str, to: IO[str], lock: threading.Lock) -> None:
    """Copy a worker's output line by line, prefixed, so that the workers' lines never mix mid-line."""
    for line in iter(stream.readline, b""):
        with lock:
            to.write(f"[{prefix}] {line.decode(errors='replace').rstrip()}\n")
            to.flush()
    stream.close()


def _start(task: WorkerTask, lock: threading.Lock) -> tuple[subprocess.Popen, list[threading.Thread]]:
    # the workers must run this very code, not another copy the interpreter would find first (an editable install of
    # another checkout): the folder this package was imported from goes first on their path
    path = os.pathsep.join(p for p in (str(Path(lightning_prune.__file__).resolve().parents[1]),
                                       os.environ.get("PYTHONPATH")) if p)  # fmt: skip
    threads = str(task.plan.threads)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if task.plan.device is not None:
        env["CUDA_VISIBLE_DEVICES"] = task.plan.device
    process = subprocess.Popen([sys.executable, "-m", "lightning_prune.compare.workers"], env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)  # fmt: skip
    relays = [threading.Thread(target=_relay, args=(stream, task.plan.name, to, lock), daemon=True)
              for stream, to in ((process.stdout, sys.stdout), (process.stderr, sys.stderr))]  # fmt: skip
    for relay in relays:
        relay.start()
    assert process.stdin is not None
    process.stdin.write(pickle.dumps(task))
    process.stdin.close()
    return process, relays


def _interrupt(*_: Any) -> None:
    # scancel and a scheduler's time limit send SIGTERM: stop the workers as Ctrl-C does, leaving runs resumable
    raise KeyboardInterrupt


def run_workers(comparison: Comparison, share: Share, plans: list[WorkerPlan]) -> int:
    """Run the workers until each has nothing left to take; their worst exit code (0, or 1 when a run crashed).

    Raises:
        KeyboardInterrupt: Ctrl-C or SIGTERM: every worker was stopped first (its run recorded as interrupted).
    """
    lock = threading.Lock()
    for plan in plans:
        say(plan.describe())
    started: list[tuple[subprocess.Popen, list[threading.Thread]]] = []
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set a signal handler
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        for plan in plans:
            started.append(_start(WorkerTask(comparison, Share(share.shard, share.timeout, plan.name), plan), lock))
        codes = [process.wait() for process, _ in started]
    except KeyboardInterrupt:
        say("interrupted: stopping the workers; re-run the same command to resume")
        _stop([process for process, _ in started])
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        for relay in (relay for _, relays in started for relay in relays):
            relay.join()
    for plan, code in zip(plans, codes, strict=True):
        if code not in (0, 1):
            say(f"worker {plan.name} exited with code {code}: its claimed run, if any, is taken again on the next pass")
    return max(codes) if all(code in (0, 1) for code in codes) else 1


def _stop(processes: list[subprocess.Popen]) -> None:
    """One SIGINT to each worker, then wait; a second Ctrl-C kills them (their claims then go stale: their runs are
    taken again on the next pass)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    try:
        for process in processes:
            process.wait()
    except KeyboardInterrupt:
        for process in processes:
            process.kill()
            process.wait()


def main() -> None:
    """A worker: read its task from stdin, make its pass, exit 1 when a run crashed, 130 when interrupted."""
    task: WorkerTask = pickle.load(sys.stdin.buffer)
    import torch

    torch.set_num_threads(task.plan.threads)
    try:
        records = run_comparison(task.comparison, task.share)
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)
    sys.exit(1 if any(record["status"] == RunStatus.CRASHED for record in records) else 0)


if __name__ == "__main__":
    main()
