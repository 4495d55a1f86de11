"""Claiming runs, so that several processes (``--jobs`` workers, ``--shard`` processes on machines that share the
output folder) never train one run at once, and the runs of a process that died are taken again.

A run's claims are numbered files in ``OUTPUT/claims/<run>/``: ``1.json``, ``2.json``, ...; the highest number is the
run's claim. Taking a run is creating the next number with ``O_CREAT | O_EXCL``: of all the processes that try, exactly
one creates it (atomic on local file systems and on NFS v3 and later), so taking over a dead claimant's run never
deletes or overwrites a file that someone else might hold, and the numbers keep the history of who ran a run.

A claim holds its owner (host, pid, pid namespace, shard, worker, when its pass started) and when it was made. Its
holder touches the file from a thread every ``heartbeat_interval`` (its mtime is the heartbeat) and, when done,
replaces the content by its outcome: the claim is then *free*. An unreleased claim is *stale*, and the run may be taken
again, when its owner is a process of this machine that no longer exists, or when its heartbeat is older than the
timeout (a process on another machine, or one that stopped). Otherwise it is *live* and the run is left to its owner.
Ages are measured against the file system's own clock (``fs_now``), so that hosts whose clocks differ still agree on a
heartbeat's age in a shared folder. Numbers are only ever created one above the highest, so a holder learns that its
run was taken over by looking for the number after its own.

Standard library only.
"""

import contextlib
import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from lightning_prune.compare.results import now, write_json

CLAIMS_DIR = "claims"
DEFAULT_TIMEOUT_S = 300.0
CLAIM_FILE = re.compile(r"(\d+)\.json")


def heartbeat_interval(timeout: float) -> float:
    """How often a holder touches its claim: often enough that a few missed beats never make it look stale.

    Example:
        >>> heartbeat_interval(300), heartbeat_interval(2)
        (30.0, 0.4)
    """
    return min(30.0, timeout / 5)


def _pid_namespace() -> str:
    # two containers can share a host name but not their processes: a pid is only checked within its own namespace
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


@dataclass(frozen=True)
class Owner:
    """Who holds a claim. ``token`` tells one claim of a process from another."""

    host: str
    pid: int
    pid_namespace: str
    shard: str
    worker: str
    started: str
    token: str

    @classmethod
    def me(cls, shard: str = "", worker: str = "") -> "Owner":
        return cls(socket.gethostname(), os.getpid(), _pid_namespace(), shard, worker, now(), uuid.uuid4().hex)

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> "Owner":
        return cls(**{key: content.get(key, "") for key in cls.__dataclass_fields__})

    def describe(self) -> str:
        where = ", ".join(part for part in (f"shard {self.shard}" if self.shard else "", self.worker) if part)
        return f"{self.host} pid {self.pid}" + (f" ({where})" if where else "")

    def on_this_machine(self) -> bool:
        return self.host == socket.gethostname() and self.pid_namespace == _pid_namespace()

    def process_exists(self) -> bool:
        """Whether the owner's process exists; only meaningful ``on_this_machine``. A reused pid counts as alive: the
        heartbeat then decides."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process
            return True
        return True


class State(str, Enum):
    FREE = "free"  # no claim, or the last one was released
    LIVE = "live"
    STALE = "stale"


@dataclass(frozen=True)
class ClaimInfo:
    """What a run's highest claim says: its number (0: never claimed), its state, its owner (None when never claimed
    or not written yet), its heartbeat's age in seconds, why it is stale, and what a release recorded."""

    generation: int
    state: State
    owner: Owner | None = None
    age_s: float = 0.0
    why: str = ""
    released: dict[str, Any] | None = None

    def describe(self) -> str:
        who = self.owner.describe() if self.owner else "a process that has not written its name yet"
        return f"claimed by {who}, heartbeat {self.age_s:.0f}s ago"


def claims_folder(output: Path, name: str) -> Path:
    return output / CLAIMS_DIR / name


def fs_now(folder: Path) -> float:
    """Now by the clock of the file system that holds ``folder`` (on NFS, the server's): the mtime of a file made for
    the purpose. Heartbeats are mtimes set by that same clock."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".now-{uuid.uuid4().hex}"
    probe.touch()
    try:
        return probe.stat().st_mtime
    finally:
        probe.unlink(missing_ok=True)


def _generations(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(match[1]) for name in os.listdir(folder) if (match := CLAIM_FILE.fullmatch(name)))


def inspect(folder: Path, timeout: float) -> ClaimInfo:
    """The state of the highest claim in ``folder`` (a run's claims folder)."""
    generations = _generations(folder)
    if not generations:
        return ClaimInfo(0, State.FREE)
    top = generations[-1]
    path = folder / f"{top}.json"
    try:
        mtime, text = path.stat().st_mtime, path.read_text()
    except FileNotFoundError:  # it cannot vanish (claims are never deleted) unless someone cleaned the folder
        return ClaimInfo(top, State.FREE)
    age = fs_now(folder) - mtime
    try:
        content = json.loads(text)
    except json.JSONDecodeError:  # created, not written yet (or its writer died right then): only its age tells
        return ClaimInfo(top, State.STALE if age > timeout else State.LIVE, None, age,
                         f"unwritten claim, no heartbeat for {age:.0f}s")  # fmt: skip
    owner = Owner.from_json(content)
    if "outcome" in content:
        return ClaimInfo(top, State.FREE, owner, age, released=content)
    if owner.on_this_machine() and not owner.process_exists():
        return ClaimInfo(top, State.STALE, owner, age, f"its process {owner.pid} on this machine is gone")
    if age > timeout:
        return ClaimInfo(top, State.STALE, owner, age, f"no heartbeat for {age:.0f}s (timeout {timeout:g}s)")
    return ClaimInfo(top, State.LIVE, owner, age)


class Claim:
    """A claim this process holds: a heartbeat thread touches it until ``release``. ``lost`` turns true when the
    heartbeat finds a newer claim: another process thought this one dead (it stalled for longer than the timeout) and
    took the run; the holder must then stop and leave the run's files to it."""

    def __init__(self, path: Path, generation: int, owner: Owner, timeout: float, previous: ClaimInfo) -> None:
        self.path, self.generation, self.owner, self.previous = path, generation, owner, previous
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_interval(timeout),), daemon=True,
                                        name=f"heartbeat {path.parent.name}")  # fmt: skip
        self._thread.start()

    def _beat(self, interval: float) -> None:
        successor = self.path.with_name(f"{self.generation + 1}.json")
        while not self._stop.wait(interval):
            if successor.exists():
                self.lost = True
                return
            # a file system hiccup: the next beat tries again, the timeout leaves room for a few
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self, outcome: str, **details: Any) -> None:
        """Stop the heartbeat and record the outcome (e.g. ``finished``, ``crashed``): the claim is free."""
        self._stop.set()
        self._thread.join()
        write_json(self.path, {**asdict(self.owner), "outcome": outcome, "released": now(), **details})


def claim(folder: Path, owner: Owner, timeout: float, attempts: int = 20) -> Claim | ClaimInfo:
    """Take the run whose claims live in ``folder``: a ``Claim`` when this process got it, else the live claim that
    holds it (``ClaimInfo``)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = inspect(folder, timeout)
    for _ in range(attempts):
        if info.state is State.LIVE:
            return info
        path = folder / f"{info.generation + 1}.json"
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # another process took this number first: look again
            info = inspect(folder, timeout)
            continue
        with os.fdopen(descriptor, "w") as file:
            json.dump({**asdict(owner), "claimed": now()}, file)
        return Claim(path, info.generation + 1, owner, timeout, info)
    return info  # twenty processes in a row took the number first: as good as live


def claim_once(folder: Path, owner: Owner, timeout: float, stamp: str) -> Claim | ClaimInfo:
    """Take work that is done once per state (the report of a set of finished runs, ``stamp``): a ``Claim`` when this
    process should do it; else what holds it: a live claim (another process is at it), or a free one whose release
    recorded the same stamp (done already)."""
    info = inspect(folder, timeout)
    if info.state is State.FREE and info.released is not None and info.released.get("stamp") == stamp:
        return info
    taken = claim(folder, owner, timeout)
    if isinstance(taken, Claim) and taken.previous.released and taken.previous.released.get("stamp") == stamp:
        taken.release("skipped", stamp=stamp)  # done by the process whose claim came just before ours
        return taken.previous
    return taken


def claim_waiting(folder: Path, owner: Owner, timeout: float, poll: float = 1.0) -> Claim:
    """Take ``folder``'s claim, waiting while another process holds it."""
    while True:
        taken = claim(folder, owner, timeout)
        if isinstance(taken, Claim):
            return taken
        time.sleep(min(poll, heartbeat_interval(timeout)))
