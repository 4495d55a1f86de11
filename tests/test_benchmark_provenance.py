"""docs/BENCHMARKS.md: every result block names its command, a clean commit of this history, its machine and date
(``bench/provenance.py``), and a new block lands among the current ones, not under "Older code"."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench_script(name: str):
    """A bench/ script as a module (bench/ is scripts, not a package: nothing is added to sys.path)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _bench_script("common")
provenance = _bench_script("provenance")


def _head(short: bool = True) -> str:
    args = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def _full_clone() -> bool:
    return (ROOT / ".git").exists() and not provenance.shallow(ROOT)


def _block(title: str, code: str | None, date: str = "2099-01-01", command: str | None = "`python bench/x.py`") -> str:
    lines = [f"### {title}", ""]
    if command is not None:
        lines.append(f"- command: {command}")
    if code is not None:
        lines.append(f"- code: {code}")
    lines += ["- machine: 2 CPU cores (test), torch 2, 2 threads", f"- date: {date}", "", "| a | b |", "| --- | --- |"]
    return "\n".join(lines) + "\n"


@pytest.mark.skipif(not _full_clone(), reason="needs the repository's full git history")
def test_every_block_of_the_benchmarks_file_names_a_clean_commit_of_this_history():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "provenance.py")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 problems" in result.stdout


@pytest.mark.skipif(not _full_clone(), reason="needs the repository's full git history")
def test_a_block_without_a_clean_known_commit_is_named_with_what_it_lacks(tmp_path):
    document = "# Benchmarks\n\n## Reading\n\nProse, not a block.\n\n" + "\n".join([
        _block("good", f"{_head()} (a note)"),
        _block("no commit", None),
        _block("dirty", f"{_head()} with uncommitted changes"),
        _block("unknown commit", "0123456789abcdef0123456789abcdef01234567"),
        _block("before its commit", _head(), date="2000-01-01"),
        _block("no command", _head(), command=None),
    ])  # fmt: skip
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(document)

    report = provenance.check(path, ROOT)

    assert not any("'### good'" in line for line in report)
    assert not any("Reading" in line for line in report)
    assert any("'### no commit': no '- code:' line" in line for line in report)
    assert any("'### dirty': code" in line and "not one clean commit" in line for line in report)
    assert any("'### unknown commit': commit 0123456789" in line and "not in this" in line for line in report)
    assert any("'### before its commit': dated 2000-01-01, before its commit" in line for line in report)
    assert any("'### no command': no '- command:" in line for line in report)
    script = [sys.executable, str(ROOT / "bench" / "provenance.py"), str(path)]
    assert subprocess.run(script, capture_output=True, text=True).returncode == 1


def test_a_new_block_goes_after_the_current_blocks_and_before_older_code():
    document = "# Benchmarks\n\n## Current code\n\n### a\n\ntext\n\n## Older code\n\n### old\n\ntext\n"
    placed = common.with_block(document, "\n### new\n\nfigures\n")
    assert placed.index("### a") < placed.index("### new") < placed.index("## Older code") < placed.index("### old")
    assert common.with_block("# Benchmarks\n", "\n### new\n").endswith("\n### new\n")
