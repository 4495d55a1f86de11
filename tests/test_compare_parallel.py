"""``compare``'s claims on real files: of many processes racing for a run exactly one takes it, a dead or silent owner's
claim is taken again, a holder's heartbeat keeps it live and notices a takeover."""

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from lightning_prune.compare import claims
from lightning_prune.compare.claims import Claim, ClaimInfo, Owner, State


def wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


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
