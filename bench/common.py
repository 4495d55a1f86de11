"""Shared by the bench/ scripts: the machine description and appending a result block to docs/BENCHMARKS.md."""

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
OLDER_CODE = "## Older code"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts = [f"{os.cpu_count()} CPU cores ({cpu})", f"torch {torch.__version__}", f"{torch.get_num_threads()} threads"]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    return ", ".join(parts)


def code_version() -> str:
    """The commit the benchmark ran (and whether the tree had changes), so that a figure is pinned to its code."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "lightning_prune", "bench"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}{' with uncommitted changes' if dirty else ''}"


def record(title: str, body: str) -> None:
    """Print a result block and append it to docs/BENCHMARKS.md with the command, code, machine and date."""
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    block = (
        f"\n### {title}\n\n"
        f"- command: `{command}`\n- code: {code_version()}\n- machine: {machine()}\n"
        f"- date: {datetime.date.today().isoformat()}\n\n{body}\n"
    )
    print(block)
    BENCHMARKS.parent.mkdir(parents=True, exist_ok=True)
    if not BENCHMARKS.exists():
        BENCHMARKS.write_text("# Benchmarks\n\nEvery block below was appended by the bench/ script named in it.\n")
    BENCHMARKS.write_text(with_block(BENCHMARKS.read_text(), block))


def with_block(document: str, block: str) -> str:
    """``document`` with ``block`` at the end of its current blocks: before the "## Older code" section if it has one
    (blocks of code that has changed since are kept there, after the current ones), else at the end."""
    older = document.find(f"\n{OLDER_CODE}\n")
    if older < 0:
        return document + block
    return document[:older].rstrip("\n") + "\n" + block + document[older:]


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
