"""docs/ARCHITECTURE.md is the import contract: each module imports only what its entry allows, and nothing cycles."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_prune"


def module_names() -> dict[str, Path]:
    """Every module of the package by its dotted name under ``lightning_prune`` ("lightning_prune" itself too)."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts) or "lightning_prune"] = path
    return names


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules ``path`` imports, at any depth of the file (inside functions and TYPE_CHECKING too)."""
    found = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    ["lightning_prune", *package[: len(package) - node.level + 1], *([base] if base else [])]
                )
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            targets = [node.args[0].value] if isinstance(node.args[0], ast.Constant) else []
        else:
            continue
        for target in targets:
            if target == "lightning_prune":
                found.add("lightning_prune")
            elif str(target).startswith("lightning_prune."):
                short = str(target).removeprefix("lightning_prune.")
                while short not in known and "." in short:  # `from pkg import name`: the module, not the name
                    short = short.rsplit(".", 1)[0]
                found.add(short)
                break  # the first target that is a module is what this statement imports
    found.discard(name)
    return found


def entries(text: str) -> list[str]:
    """The module entries of the page, each on one line: a bullet starting with a bold module name, with the lines
    that continue it."""
    found: list[str] = []
    for line in text.splitlines():
        if line.startswith("- **`"):
            found.append(line)
        elif found and line.startswith("  ") and line.strip():
            found[-1] += " " + line.strip()
        elif not line.startswith("  "):
            found.append("") if found and found[-1] else None
    return [entry for entry in found if entry]


def documented() -> dict[str, set[str]]:
    """Module -> the modules its entry in docs/ARCHITECTURE.md allows (an empty set: nothing of ours)."""
    allowed = {}
    for entry in entries((ROOT / "docs" / "ARCHITECTURE.md").read_text()):
        names = re.findall(r"\*\*`([\w.]+)`\*\*", entry.split(":", 1)[0])
        listed = entry.rsplit("May import:", 1)[1].strip().rstrip(".") if "May import:" in entry else None
        if listed is None:
            continue
        may = set() if listed.startswith("nothing of ours") else {part.split()[0] for part in listed.split(",")}
        allowed.update({name: may for name in names})
    return allowed


def allows(allowed: set[str], target: str) -> bool:
    return any(target == a or target.startswith(f"{a}.") for a in allowed)


MODULES = module_names()
RULES = documented()


def test_every_module_has_an_entry_and_every_entry_a_module():
    assert sorted(set(MODULES) - set(RULES)) == []
    assert sorted(set(RULES) - set(MODULES)) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_module_imports_only_what_its_entry_allows(name):
    imported = imports_of(name, MODULES[name], set(MODULES))
    assert sorted(t for t in imported if not allows(RULES.get(name, set()), t)) == [], name


def test_the_imports_have_no_cycle():
    graph = {name: imports_of(name, path, set(MODULES)) for name, path in MODULES.items()}
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                raise AssertionError(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


def test_modules_stay_short_and_the_callback_thin():
    lengths = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in lengths.items() if n > 400} == {}
    assert lengths["callback"] <= 300


def test_the_checker_sees_an_import_its_entry_does_not_allow(tmp_path):
    # a check that could not fail would hold nothing: a module importing the callback is caught
    probe = tmp_path / "layers.py"
    probe.write_text("def f():\n    from lightning_prune.callback import RealTimePruningCallback\n")
    imported = imports_of("layers", probe, set(MODULES))
    assert imported == {"callback"} and not allows(RULES["layers"], "callback")
