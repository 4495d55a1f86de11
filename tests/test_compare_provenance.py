"""``lightning_prune.compare.provenance``: the commit and dirty state of a real git repository, config hashes that
ignore the run's folder, and which finished runs are stale."""

import subprocess
from pathlib import Path

import pytest

from lightning_prune.compare import provenance


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repository(tmp_path, monkeypatch) -> Path:
    """A git repository with one commit, standing in for the package's own."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    git(root, "config", "user.email", "t@example.com")
    git(root, "config", "user.name", "t")
    (root / "code.py").write_text("x = 1\n")
    git(root, "add", "code.py")
    git(root, "commit", "-q", "-m", "first")
    monkeypatch.setattr(provenance, "package_repository", lambda: root)
    return root


def test_code_state_of_a_clean_and_a_dirty_tree(repository):
    head = git(repository, "rev-parse", "HEAD").strip()
    assert provenance.code_state() == {"commit": head, "dirty": False, "diff_hash": ""}
    # the comparison's own untracked output does not make the tree dirty
    (repository / "runs" / "cmp").mkdir(parents=True)
    (repository / "runs" / "cmp" / "results.csv").write_text("arm\n")
    assert provenance.code_state(repository / "runs" / "cmp")["dirty"] is False
    assert provenance.code_state()["dirty"] is True  # without the output folder, it does
    (repository / "code.py").write_text("x = 2\n")
    first = provenance.code_state(repository / "runs" / "cmp")
    assert first["commit"] == head and first["dirty"] is True and len(first["diff_hash"]) == 16
    assert provenance.code_state(repository / "runs" / "cmp") == first  # the same change, the same hash
    (repository / "code.py").write_text("x = 3\n")
    assert provenance.code_state(repository / "runs" / "cmp")["diff_hash"] != first["diff_hash"]


def test_outside_a_git_checkout_the_commit_is_unknown(monkeypatch):
    monkeypatch.setattr(provenance, "package_repository", lambda: None)
    assert provenance.code_state() == {"commit": "unknown", "dirty": None, "diff_hash": ""}


def test_the_package_itself_is_found_in_its_checkout():
    root = provenance.package_repository()
    assert root is not None and (root / "lightning_prune" / "compare" / "provenance.py").is_file()
    state = provenance.code_state()
    assert len(state["commit"]) == 40 and isinstance(state["dirty"], bool)
    assert set(provenance.versions()) == {"torch_version", "lightning_version", "lightning_prune_version"}


def test_config_hash_ignores_the_run_folder_and_loggers_but_not_the_seed_or_settings():
    def resolved(folder: str, lr: float = 0.001) -> dict:
        return {"config": [f"{folder}/a.yaml"], "seed_everything": 0,
                "trainer": {"max_epochs": 2, "default_root_dir": f"{folder}/runs/x",
                            "logger": {"init_args": {"save_dir": folder, "group": folder}}},
                "model": {"lr": lr}, "pruning": {"target_sparsity": 0.9}}  # fmt: skip

    def run_hash(config: dict, seed: int) -> str:
        return provenance.content_hash(provenance.run_config(provenance.without_per_run_keys(config), seed, {}))

    assert run_hash(resolved("/a"), 0) == run_hash(resolved("/b"), 0)
    assert run_hash(resolved("/a"), 0) != run_hash(resolved("/a"), 1)
    assert run_hash(resolved("/a"), 0) != run_hash(resolved("/a", lr=0.01), 0)
    # the task hash leaves the pruning callback out: the same for a pruned and an unpruned arm of one task
    plain = {**provenance.without_per_run_keys(resolved("/a")), "pruning": None}
    pruned = provenance.without_per_run_keys(resolved("/b"))
    assert provenance.content_hash(provenance.task_config(plain)) == provenance.content_hash(
        provenance.task_config(pruned)
    )


def test_stale_reasons_name_what_changed():
    now = {"commit": "a", "dirty": True, "diff_hash": "d1", "config_hash": "c", "torch_version": "2",
           "lightning_version": "2.6", "lightning_prune_version": "0.1"}  # fmt: skip
    assert provenance.stale_reasons(dict(now), now) == []
    assert provenance.stale_reasons({**now, "diff_hash": "d2"}, now) == ["diff_hash d2, now d1"]
    assert provenance.stale_reasons({**now, "torch_version": "1"}, now) == ["torch_version 1, now 2"]
    assert provenance.stale_reasons({"arm": "x"}, now) == ["no provenance recorded (made before runs recorded it)"]
