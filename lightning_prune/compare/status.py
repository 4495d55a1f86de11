"""A run's record on disk, ``status.json``: what it says of the run (``RunStatus``), and reading it back; the arms every
comparison has. Standard library only: the report tier reads these without Lightning."""

import json
from pathlib import Path
from typing import Any

from lightning_prune.validation import Choice

STATUS_FILE = "status.json"
# the two arms every comparison has; the others are named by their options or baseline
UNPRUNED, PRUNED = "unpruned", "pruned"


class RunStatus(Choice):
    """What a run's ``status.json`` (and its row of ``results.csv``) says of it."""

    RUNNING = "running"  # being trained (by this process or another)
    FINISHED = "finished"
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM: the same command resumes it
    CRASHED = "crashed"
    LOST = "lost"  # this process stopped it because another took it over: its status.json is the other's to write
    STALE = "stale"  # in a report: finished by other code or config, not (yet) run again


def read_status(directory: Path) -> dict[str, Any] | None:
    """A run's ``status.json``, None when it has none (or half of one)."""
    path = directory / STATUS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:  # a run killed while writing it: run it again
        return None
