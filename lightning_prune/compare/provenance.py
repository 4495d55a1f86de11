"""What a run was made by: the code (commit, dirty tree), the resolved config (a hash), the library versions.

Every run records ``PROVENANCE_COLUMNS`` in its ``status.json`` and ``results.csv``; a finished run is reused on resume
only when ``stale_reasons`` finds nothing that differs from now. Standard library only (versions are read from the
installed distributions, not by importing torch).
"""

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning_prune

UNKNOWN = "unknown"
# the code: commit, whether the work tree differed from it, and a hash of that difference (empty when clean)
CODE_COLUMNS = ("commit", "dirty", "diff_hash")
# the run's resolved config with its seed, and the same without the pruning callback, the baseline and the seed: the
# task (model, data, trainer budget) that every arm of a comparison shares
CONFIG_COLUMNS = ("config_hash", "task_hash")
VERSION_COLUMNS = ("torch_version", "lightning_version", "lightning_prune_version")
PROVENANCE_COLUMNS = (*CODE_COLUMNS, *CONFIG_COLUMNS, *VERSION_COLUMNS)
# what must match for a finished run to be reused on resume
REUSE_KEYS = (*CODE_COLUMNS, "config_hash", *VERSION_COLUMNS)
# per-run parts of a resolved config: the config files' paths (their content is resolved), the run's directory, and
# the loggers (where and under which name a run logs changes nothing it computes)
PER_RUN_KEYS = ("config", "trainer.default_root_dir", "trainer.logger")


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60,
                                check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def package_repository() -> Path | None:
    """The git work tree the imported ``lightning_prune`` lives in; None for an installed copy outside one."""
    top = _git(Path(lightning_prune.__file__).resolve().parent, "rev-parse", "--show-toplevel")
    return Path(top.strip()) if top else None


def code_state(output: Path | None = None) -> dict[str, Any]:
    """``commit``, ``dirty`` and ``diff_hash`` of the package's repository.

    ``dirty`` is whether ``git status --porcelain`` lists anything, untracked files under ``output`` (the comparison's
    own folder) aside. ``diff_hash`` hashes ``git diff HEAD`` and the names of the untracked files, so that two runs
    of the same uncommitted code match and runs of different uncommitted code do not. Outside a git checkout the
    commit is ``"unknown"`` and ``dirty`` None.
    """
    root = package_repository()
    commit = _git(root, "rev-parse", "HEAD") if root else None
    if root is None or commit is None:
        return {"commit": UNKNOWN, "dirty": None, "diff_hash": ""}
    status = _git(root, "status", "--porcelain", "--untracked-files=all") or ""
    inside = None
    if output is not None:
        try:
            inside = Path(output).resolve().relative_to(root).as_posix() + "/"
        except ValueError:  # the output folder is outside the repository
            inside = None
    lines = [line for line in status.splitlines() if line.strip()]
    lines = [line for line in lines if not (inside and line.startswith("?? ") and line[3:].startswith(inside))]
    if not lines:
        return {"commit": commit.strip(), "dirty": False, "diff_hash": ""}
    diff = _git(root, "diff", "HEAD", "--no-ext-diff", "--binary") or ""
    untracked = sorted(line[3:] for line in lines if line.startswith("?? "))
    digest = hashlib.sha256((diff + "\n".join(untracked)).encode()).hexdigest()[:16]
    return {"commit": commit.strip(), "dirty": True, "diff_hash": digest}


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return UNKNOWN


def versions() -> dict[str, str]:
    """The versions of torch, lightning and lightning-prune (the imported package's own ``__version__``)."""
    return {"torch_version": _version("torch"), "lightning_version": _version("lightning"),
            "lightning_prune_version": lightning_prune.__version__}  # fmt: skip


def without_per_run_keys(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved LightningCLI config (``Namespace.as_dict()``) without ``PER_RUN_KEYS``: what two runs of the same
    configuration in different folders share.

    Example:
        >>> without_per_run_keys({"config": ["a.yaml"], "seed_everything": 1,
        ...                       "trainer": {"max_epochs": 2, "default_root_dir": "runs/x", "logger": {"a": 1}}})
        {'seed_everything': 1, 'trainer': {'max_epochs': 2}}
    """
    kept = json.loads(json.dumps(config, default=str))
    for key in PER_RUN_KEYS:
        *parents, last = key.split(".")
        node = kept
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return kept


def content_hash(content: Any) -> str:
    """A short SHA-256 of ``content`` as canonical JSON (sorted keys)."""
    text = json.dumps(content, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_config(arm_config: dict[str, Any], seed: int, extra: dict[str, Any]) -> dict[str, Any]:
    """What a run's ``config_hash`` hashes: its arm's resolved config (``without_per_run_keys``) with the run's seed,
    and what ``compare`` adds outside LightningCLI (``extra``: a baseline's schedule, which weights sparsity counts,
    the profiling threads)."""
    return {"config": {**arm_config, "seed_everything": seed}, "compare": extra}


def task_config(arm_config: dict[str, Any]) -> dict[str, Any]:
    """What ``task_hash`` hashes: the arm's resolved config without the pruning callback and the seed (model, data,
    trainer, optimizer): the same for every arm of a comparison that changes nothing but pruning."""
    return {key: value for key, value in arm_config.items() if key not in ("pruning", "seed_everything")}


def stale_reasons(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Why a finished run's record does not match the code, versions and config of now (``REUSE_KEYS``); empty when it
    does. A record without provenance (made before it was recorded) is stale.

    Example:
        >>> now = {"commit": "abc", "dirty": False, "diff_hash": "", "config_hash": "h1", "torch_version": "2",
        ...        "lightning_version": "2.6", "lightning_prune_version": "0.1"}
        >>> stale_reasons({**now, "commit": "def", "config_hash": "h2"}, now)
        ['commit def, now abc', 'config_hash h2, now h1']
        >>> stale_reasons(now, now)
        []
        >>> stale_reasons({"arm": "pruned"}, now)
        ['no provenance recorded (made before runs recorded it)']
    """
    if "commit" not in previous:
        return ["no provenance recorded (made before runs recorded it)"]
    return [f"{key} {previous.get(key)}, now {current.get(key)}" for key in REUSE_KEYS
            if previous.get(key) != current.get(key)]  # fmt: skip
