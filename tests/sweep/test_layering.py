"""sweep/'s import graph: no circle, readers below the runner, Optuna's and MLflow's internals in one adapter."""

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ROOT / "sweep"
ADAPTER = "sweep.adapters"
# Internals of Optuna and MLflow that only the adapter may name.
PRIVATE = re.compile(r"\._storage\b|\._trial_id\b|\._all_grids\b|mlflow\.store\b|mlflow\.utils\b|[\"']fixed_params[\"']")


def modules() -> dict[str, Path]:
    return {f"sweep.{path.stem}": path for path in sorted(SWEEP.glob("*.py")) if path.stem != "__init__"}


def imports(path: Path) -> set[str]:
    """Every module the file imports, at its top or inside functions ("from sweep import x" counts as sweep.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def graph() -> dict[str, set[str]]:
    """sweep module -> the sweep modules it imports."""
    names = modules()
    return {name: {m for m in imports(path) if m in names and m != name} for name, path in names.items()}


def reaches(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_graph_is_parsed():
    edges = graph()
    assert {"sweep.cli", "sweep.runner", "sweep.schema", "sweep.study", ADAPTER} <= edges.keys()
    assert "sweep.runner" in edges["sweep.cli"] and "sweep.schema" in edges["sweep.objective"]


def test_no_import_circle():
    edges = graph()
    circles = sorted(name for name in edges if name in reaches(name, edges))
    assert circles == []


@pytest.mark.parametrize("reader", ["sweep.report", "sweep.refine", "sweep.plots"])
def test_readers_of_a_finished_study_never_import_the_runner_or_the_cli(reader):
    assert not {"sweep.runner", "sweep.cli", "sweep.objective"} & reaches(reader, graph())


def test_storage_does_not_import_tracking():
    assert "sweep.tracking" not in reaches("sweep.storage", graph())


@pytest.mark.parametrize("bottom", ["sweep.schema", "sweep.errors", "sweep.limits", "sweep.space", "sweep.urls"])
def test_the_bottom_imports_nothing_above_it(bottom):
    assert reaches(bottom, graph()) <= {"sweep.errors", "sweep.limits"}


def test_only_tracking_and_the_adapter_import_mlflow():
    users = sorted(name for name, path in modules().items()
                   if any(m == "mlflow" or m.startswith("mlflow.") for m in imports(path)))
    # (the adapter names MLflow's modules without importing them at import; sweep.served is the
    # logged model's code, which MLflow runs when it loads the model and no module imports)
    assert users == ["sweep.served", "sweep.tracking"]
    edges = graph()
    assert not any("sweep.served" in targets for targets in edges.values())
    assert edges["sweep.served"] <= {"sweep.schema"}


def test_private_names_only_in_the_adapter():
    named = sorted(name for name, path in modules().items() if PRIVATE.search(path.read_text()))
    assert named == [ADAPTER]


def test_every_stored_name_is_defined_once():
    """Attribute and tag names ("mlp_sweep.<...>") are written as text in sweep.schema alone."""
    stored = re.compile(r"[\"']mlp_sweep\.[a-z_]+[\"']")
    assert sorted(name for name, path in modules().items() if stored.search(path.read_text())) == []
    assert "_PREFIX + " in (SWEEP / "schema.py").read_text()


def test_every_third_party_import_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~\[ ;]", dep)[0].lower().replace("_", "-")
                for dep in [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]}
    dist = {"tomli_w": "tomli-w", "grpc": "grpcio"}  # import name -> distribution name where they differ
    stdlib = __import__("sys").stdlib_module_names
    used = {m.split(".")[0] for path in [*SWEEP.glob("*.py"), *(ROOT / "core").glob("*.py")] for m in imports(path)}
    third_party = {dist.get(m, m).lower() for m in used - stdlib - {"core", "sweep", "__future__"}}
    assert third_party - declared == set()
