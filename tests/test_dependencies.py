"""Every import of segsweep and the four packages is the standard library, one of them, or a declared dependency."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: segsweep (the public face and segsweep.base) and the four packages of the layout: all first-party.
PACKAGES = ("segsweep", "trainer", "sweeps", "reports", "search_spaces")
#: Modules of the optional extras, which the code may import only inside functions (lazily).
EXTRAS_ONLY_INSIDE_FUNCTIONS = ("export",)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return _normalise(match.group(0))


def _pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    base = {_requirement_name(r) for r in project["dependencies"]}
    extras = {name: {_requirement_name(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    return base, extras


def _imports() -> dict[str, list[tuple[str, bool]]]:
    """Top-level module name -> [(file:line, at module level)] for every absolute import."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            top_level = {id(node) for node in tree.body}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    where = f"{path.relative_to(REPO)}:{node.lineno}"
                    found.setdefault(name.split(".")[0], []).append((where, id(node) in top_level))
    return found


def test_every_imported_distribution_is_declared() -> None:
    base, extras = _declared()
    distributions = packages_distributions()
    first_party = set(PACKAGES)
    undeclared: list[str] = []
    eager_extras: list[str] = []
    for module, places in sorted(_imports().items()):
        if module in sys.stdlib_module_names or module in first_party or module == "__future__":
            continue
        names = {_normalise(d) for d in distributions.get(module, [])}
        assert names, f"{module} (imported at {places[0][0]}) belongs to no installed distribution"
        if names & base:
            continue
        extra = [e for e, reqs in extras.items() if names & reqs and e in EXTRAS_ONLY_INSIDE_FUNCTIONS]
        if not extra:
            undeclared.append(f"{module} ({', '.join(sorted(names))}) at {places[0][0]}")
        eager_extras += [f"{module} at {where}" for where, at_top in places if extra and at_top]
    assert undeclared == [], "imported but not in [project] dependencies of pyproject.toml"
    assert eager_extras == [], "modules of an optional extra imported at module level"


def test_every_declared_distribution_is_pinned_in_constraints() -> None:
    base, extras = _declared()
    pinned = {
        _requirement_name(line): line.split("==", 1)[1]
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    missing = sorted(name for name in base.union(*extras.values()) if name not in pinned)
    assert missing == [], f"declared in pyproject.toml but not pinned in constraints.txt: {missing}"
