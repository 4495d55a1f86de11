"""Check that every result block of docs/BENCHMARKS.md says what produced it: exits 1, naming each block and what it
lacks, when one does not.

A result block is a ``###`` section (what ``common.record`` appends); prose sections are ``##``. Each block needs
``- command:`` (in backticks), ``- code:`` (a commit of this repository, clean: the tree had no uncommitted changes
when it ran), ``- machine:`` and ``- date:`` (YYYY-MM-DD, not before the commit's own date). A figure whose code
cannot be checked out cannot be reproduced, so it does not belong in the file.

    python bench/provenance.py [docs/BENCHMARKS.md]
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK_HEADING = re.compile(r"^### (?P<title>.+)$", re.MULTILINE)
COMMAND = re.compile(r"^- command: `[^`]+`$", re.MULTILINE)
CODE = re.compile(r"^- code: (?P<value>.*)$", re.MULTILINE)
# a hash, optionally followed by a note in parentheses: "c08f188 (the bench script of ...)"
CLEAN_COMMIT = re.compile(r"^(?P<commit>[0-9a-f]{7,40})(?: \(.*)?$")
MACHINE = re.compile(r"^- machine: \S.*$", re.MULTILINE)
DATE = re.compile(r"^- date: (?P<date>\d{4}-\d{2}-\d{2})$", re.MULTILINE)


def blocks(text: str) -> list[tuple[int, str, str]]:
    """``(line, title, body)`` of each ``###`` block, its body running to the next heading of any level."""
    found = []
    for match in BLOCK_HEADING.finditer(text):
        rest = text[match.end() :]
        following = re.search(r"^#{1,3} ", rest, re.MULTILINE)
        body = rest[: following.start()] if following else rest
        found.append((text.count("\n", 0, match.start()) + 1, match["title"], body))
    return found


def commit_date(repo: Path, commit: str) -> str | None:
    """The commit's date (YYYY-MM-DD) if ``repo`` holds it, else None."""
    exists = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo, capture_output=True)
    if exists.returncode != 0:
        return None
    shown = subprocess.run(["git", "show", "-s", "--format=%cs", commit], cwd=repo, capture_output=True, text=True)
    return shown.stdout.strip() or None


def block_problems(body: str, repo: Path | None) -> list[str]:
    """What the block lacks; ``repo`` None skips the checks against the history (a shallow clone lacks it)."""
    problems = []
    if not COMMAND.search(body):
        problems.append("no '- command: `...`' line")
    if not MACHINE.search(body):
        problems.append("no '- machine:' line")
    date = DATE.search(body)
    if not date:
        problems.append("no '- date: YYYY-MM-DD' line")
    code = CODE.search(body)
    if not code:
        return [*problems, "no '- code:' line (the commit it ran)"]
    value = code["value"].strip()
    clean = CLEAN_COMMIT.match(value)
    if "uncommitted" in value or "unknown" in value or not clean:
        return [*problems, f"code {value!r} is not one clean commit"]
    if repo is not None:
        committed = commit_date(repo, clean["commit"])
        if committed is None:
            problems.append(f"commit {clean['commit']} is not in this repository's history")
        elif date and date["date"] < committed:
            problems.append(f"dated {date['date']}, before its commit {clean['commit']} ({committed})")
    return problems


def shallow(repo: Path) -> bool:
    answer = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=repo, capture_output=True, text=True)
    return answer.returncode != 0 or answer.stdout.strip() != "false"


def check(path: Path, repo: Path | None) -> list[str]:
    """One line per block that lacks something, naming its line and title."""
    text = path.read_text()
    report = []
    for line, title, body in blocks(text):
        for problem in block_problems(body, repo):
            report.append(f"{path.name}:{line}: '### {title}': {problem}")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the git repository whose commits the blocks name")
    options = parser.parse_args()
    repo = None if shallow(options.repo) else options.repo
    if repo is None:
        print(f"{options.repo} is not a full git clone: commits not checked against the history", file=sys.stderr)
    report = check(options.path, repo)
    for line in report:
        print(line)
    print(f"{len(blocks(options.path.read_text()))} blocks, {len(report)} problems")
    return 1 if report else 0


if __name__ == "__main__":
    sys.exit(main())
