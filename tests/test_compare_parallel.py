"""``compare --jobs`` and ``--shard`` with real processes on one folder of tiny MNIST runs: workers against a
sequential run, two processes racing, a shard killed while it holds a claim, Ctrl-C, ``--report-only``; and the claims
themselves on real files."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import pytest

from lightning_prune.cli import main
from lightning_prune.compare import claims
from lightning_prune.compare.claims import Claim, ClaimInfo, Owner, State

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = ["--data.val_size", "16", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--no-wandb"]  # fmt: skip
# the line a process says as it starts training a run
TRAINING = re.compile(r"\[compare\] run \d+/\d+: (\w+), seed (\d+) \(ETA")
FIT_DONE = "`Trainer.fit` stopped"


def compare_args(data_dir: Path, output: Path, *extra: str) -> list[str]:
    return ["compare", "--config", str(CONFIGS / "mnist_cnn.yaml"), "--prune-config", str(CONFIGS / "prune.yaml"),
            "--output", str(output), "--data.data_dir", str(data_dir), *TINY, *extra]  # fmt: skip


def start(log: Path, args: list[str]) -> subprocess.Popen:
    """``lightning-prune compare`` in a process of its own, stdout and stderr into ``log``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "HF_DATASETS_OFFLINE": "1"}
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "lightning_prune.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=log.parent)  # fmt: skip


def finish(process: subprocess.Popen, log: Path, timeout: float = 240) -> tuple[int, str]:
    return process.wait(timeout=timeout), log.read_text()


def trainings(*logs: str) -> Counter:
    """How many times each run started training, over the processes' logs."""
    return Counter(f"{arm}-seed{seed}" for log in logs for arm, seed in TRAINING.findall(log))


def statuses(output: Path) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in (output / "runs").glob("*/status.json")}


def claim_files(output: Path, run: str) -> list[dict]:
    folder = output / "claims" / run
    return [json.loads((folder / f"{n}.json").read_text()) for n in range(1, len(list(folder.glob("*.json"))) + 1)]


def wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def running(output: Path, run: str) -> bool:
    return statuses(output).get(run, {}).get("status") == "running"


RUNS = {"unpruned-seed0", "pruned-seed0", "unpruned-seed1", "pruned-seed1"}


@pytest.mark.slow
def test_jobs_run_every_run_once_and_give_the_results_of_a_sequential_run(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(compare_args(tiny_mnist, tmp_path / "sequential", "--seeds", "2"))
    output = tmp_path / "jobs"
    code, log = finish(start(tmp_path / "jobs.log", compare_args(tiny_mnist, output, "--seeds", "2", "--jobs", "2")),
                       tmp_path / "jobs.log")  # fmt: skip
    assert code == 0, log
    assert trainings(log) == dict.fromkeys(RUNS, 1)
    assert log.count(FIT_DONE) == 4
    # what each worker got, and every line of a worker carries its name
    for worker in ("w1", "w2"):
        assert re.search(rf"worker {worker}: (the CPU|CUDA device \S+), \d+ CPU thread", log), worker
    assert all(line.startswith(("[w1] ", "[w2] ")) for line in log.splitlines() if TRAINING.search(line))
    assert {line[:4] for line in log.splitlines() if TRAINING.search(line)} == {"[w1]", "[w2]"}

    parallel = pd.read_csv(output / "results.csv").set_index(["arm", "seed"]).sort_index()
    sequential = pd.read_csv(tmp_path / "sequential" / "results.csv").set_index(["arm", "seed"]).sort_index()
    assert list(parallel.index) == list(sequential.index) and len(parallel) == 4
    assert set(parallel["status"]) == {"finished"} and set(parallel["attempts"]) == {1}
    for column in ("config_hash", "task_hash", "epochs", "params_total", "params_nonzero", "commit"):
        assert parallel[column].tolist() == sequential[column].tolist(), column
    for column in ("test_acc", "test_loss", "sparsity", "flops_effective"):
        assert parallel[column].tolist() == pytest.approx(sequential[column].tolist(), rel=1e-4), column
    assert (output / "report.md").is_file()


@pytest.mark.slow
def test_two_processes_racing_on_one_folder_run_every_run_once_and_write_one_report(tiny_mnist, tmp_path):
    output = tmp_path / "race"
    args = compare_args(tiny_mnist, output, "--seeds", "2", "--shard", "0/1")
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    processes = [start(log, args) for log in logs]
    results = [finish(process, log) for process, log in zip(processes, logs, strict=True)]
    assert [code for code, _ in results] == [0, 0], results
    texts = [text for _, text in results]
    assert trainings(*texts) == dict.fromkeys(RUNS, 1)
    assert sum(text.count(FIT_DONE) for text in texts) == 4
    assert {status["status"] for status in statuses(output).values()} == {"finished"}
    assert {status["attempts"] for status in statuses(output).values()} == {1}
    assert all(len(claim_files(output, run)) == 1 for run in RUNS)
    # one of them wrote the report: the last to finish a run, or the first of two that finished together
    assert sum("every run has finished; report:" in text for text in texts) == 1
    assert [c["outcome"] for c in claim_files(output, "_report")].count("written") == 1
    assert len(pd.read_csv(output / "results.csv")) == 4


@pytest.mark.slow
def test_a_killed_shards_claimed_run_is_taken_again_and_report_only_names_what_is_missing(
    tiny_mnist, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "killed"
    shard0 = start(tmp_path / "shard0.log", compare_args(tiny_mnist, output, "--seeds", "1", "--shard", "0/2",
                                                          "--claim-timeout", "3"))  # fmt: skip
    wait_for(lambda: running(output, "unpruned-seed0"))
    time.sleep(0.3)  # into its run (a tiny run takes seconds: it must not finish first)
    shard0.send_signal(signal.SIGKILL)
    shard0.wait()
    # as if the shard had run on another machine sharing the folder: only the heartbeat can tell that it died
    path = output / "claims" / "unpruned-seed0" / "1.json"
    held, mtime = json.loads(path.read_text()), path.stat().st_mtime
    assert "outcome" not in held and held["shard"] == "0/2"
    path.write_text(json.dumps({**held, "host": "another-host"}))
    os.utime(path, (mtime, mtime))

    # --report-only before every run finished: names the missing runs, writes a report labelled partial, exits 1
    with pytest.raises(SystemExit) as partial:
        main(compare_args(tiny_mnist, output, "--seeds", "1", "--report-only", "--claim-timeout", "3"))
    assert partial.value.code == 1
    err = capsys.readouterr().err
    assert "partial report: 2 of 2 runs have not finished" in err
    assert "unpruned, seed 0: claimed by another-host pid" in err or "unpruned, seed 0: running" in err
    assert "pruned, seed 0: not started" in err
    assert "**Partial report: 2 planned run(s) have not finished.**" in (output / "report.md").read_text()

    code, log = finish(start(tmp_path / "shard1.log", compare_args(tiny_mnist, output, "--seeds", "1", "--shard",
                                                                   "1/2", "--claim-timeout", "3")),
                       tmp_path / "shard1.log")  # fmt: skip
    assert code == 0, log
    # its own run, then the dead shard's claimed one
    assert trainings(log) == {"pruned-seed0": 1, "unpruned-seed0": 1}
    assert re.search(r"unpruned, seed 0: taken over from another-host pid \d+ \(shard 0/2\): no heartbeat for", log)
    assert "every run has finished; report:" in log
    first, second = claim_files(output, "unpruned-seed0")
    assert first["host"] == "another-host" and "outcome" not in first
    assert second["shard"] == "1/2" and second["outcome"] == "finished"
    assert statuses(output)["unpruned-seed0"]["attempts"] == 2
    results = pd.read_csv(output / "results.csv")
    assert len(results) == 2 and set(results["status"]) == {"finished"}

    main(compare_args(tiny_mnist, output, "--seeds", "1", "--report-only"))
    assert "report: " in capsys.readouterr().err
    assert "Partial report" not in (output / "report.md").read_text()


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_and_leaves_their_runs_resumable(tiny_mnist, tmp_path):
    output = tmp_path / "interrupted"
    log = tmp_path / "interrupted.log"
    # runs far longer than the wait for both workers to start, so SIGINT always lands in the middle of a fit (at 50
    # epochs a quiet machine finished both tiny runs before the signal)
    parent = start(log, compare_args(tiny_mnist, output, "--seeds", "1", "--jobs", "2", "--trainer.max_epochs", "2000"))
    # both workers in the middle of a fit
    wait_for(lambda: all(re.search(rf"\[{w}\] Epoch \d+ step", log.read_text()) for w in ("w1", "w2")))
    parent.send_signal(signal.SIGINT)
    code, text = finish(parent, log, timeout=120)
    assert code == 130, text
    assert {status["status"] for status in statuses(output).values()} == {"interrupted"}
    # released: the next pass takes them at once
    for run in ("unpruned-seed0", "pruned-seed0"):
        assert [c.get("outcome") for c in claim_files(output, run)] == ["interrupted"], run
        assert claims.inspect(output / "claims" / run, 300).state is State.FREE
    assert "re-run the same command to resume" in text
    assert text.count("Detected KeyboardInterrupt") == 2  # one SIGINT each: Lightning's graceful shutdown, once


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--shard", "4/4"], "argument --shard: '4/4': expected I/N with 0 <= I < N, 0-based"),
        (["--shard", "1"], "argument --shard: '1': expected I/N"),
        (["--shard=-1/2"], "argument --shard: '-1/2'"),
        (["--shard", "0/0"], "argument --shard: '0/0'"),
        (["--jobs", "0"], "argument --jobs: must be at least 1, got 0"),
        (["--jobs", "two"], "argument --jobs: invalid int value: 'two'"),
        (["--jobs-per-device", "0"], "argument --jobs-per-device: must be at least 1, got 0"),
        (["--claim-timeout", "0"], "argument --claim-timeout: must be more than 0 seconds, got 0"),
        (["--report-only", "--jobs", "2"], "argument --report-only: writes the report from the runs on disk"),
    ],
)
def test_bad_jobs_and_shard_values_name_themselves(option, message, tiny_mnist, tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        main(compare_args(tiny_mnist, tmp_path / "out", *option))
    assert error.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()


# -- the claims on real files ------------------------------------------------------------------------------------------


def write_claim(folder: Path, number: int, owner: Owner, age: float = 0.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{number}.json"
    path.write_text(json.dumps(asdict(owner)))
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_of_many_racing_for_a_run_exactly_one_claims_it(tmp_path):
    barrier, won = threading.Barrier(8), []

    def race() -> None:
        barrier.wait()
        taken = claims.claim(tmp_path / "run", Owner.me(), 60)
        won.append(taken)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    held = [taken for taken in won if isinstance(taken, Claim)]
    assert len(held) == 1 and sum(isinstance(taken, ClaimInfo) for taken in won) == 7
    assert [path.name for path in (tmp_path / "run").iterdir()] == ["1.json"]
    held[0].release("finished")
    assert claims.inspect(tmp_path / "run", 60).state is State.FREE


def test_a_claim_of_a_dead_process_on_this_machine_is_stale_at_once(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner = Owner.me(shard="0/2")
    write_claim(tmp_path, 1, replace(owner, pid=int(gone.stdout)))
    info = claims.inspect(tmp_path, timeout=3600)
    assert info.state is State.STALE and f"its process {int(gone.stdout)} on this machine is gone" in info.why
    taken = claims.claim(tmp_path, Owner.me(), 3600)
    assert isinstance(taken, Claim) and taken.generation == 2 and taken.previous.owner.shard == "0/2"
    taken.release("finished")


def test_a_claim_from_another_machine_is_live_until_its_heartbeat_is_older_than_the_timeout(tmp_path):
    elsewhere = replace(Owner.me(), host="another-host")
    path = write_claim(tmp_path, 1, elsewhere, age=5)
    busy = claims.claim(tmp_path, Owner.me(), timeout=60)
    assert isinstance(busy, ClaimInfo) and busy.state is State.LIVE
    assert busy.describe().startswith("claimed by another-host pid")
    then = time.time() - 120
    os.utime(path, (then, then))
    info = claims.inspect(tmp_path, timeout=60)
    assert info.state is State.STALE and info.why.startswith("no heartbeat for 12")
    taken = claims.claim(tmp_path, Owner.me(), timeout=60)
    assert isinstance(taken, Claim) and taken.generation == 2
    taken.release("crashed")
    assert claims.inspect(tmp_path, 60).released["outcome"] == "crashed"


def test_the_heartbeat_keeps_a_claim_live_and_notices_a_takeover(tmp_path):
    taken = claims.claim(tmp_path, Owner.me(), timeout=0.5)  # a beat every 0.1 s
    assert isinstance(taken, Claim)
    time.sleep(1.0)
    assert claims.inspect(tmp_path, timeout=0.5).state is State.LIVE  # twice the timeout, still beating
    assert not taken.lost
    write_claim(tmp_path, 2, replace(Owner.me(), host="another-host"))  # someone thought it dead
    wait_for(lambda: taken.lost, timeout=5)
    taken.release("lost")


def test_work_done_once_per_state_is_skipped_when_done_already(tmp_path):
    first = claims.claim_once(tmp_path, Owner.me(), 60, stamp="s1")
    assert isinstance(first, Claim)
    first.release("written", stamp="s1")
    again = claims.claim_once(tmp_path, Owner.me(), 60, stamp="s1")
    assert isinstance(again, ClaimInfo) and again.state is State.FREE
    newer = claims.claim_once(tmp_path, Owner.me(), 60, stamp="s2")  # other runs on disk: write again
    assert isinstance(newer, Claim) and newer.generation == 2
    newer.release("written", stamp="s2")
