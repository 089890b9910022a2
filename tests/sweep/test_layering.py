"""The import graph of core/ and sweep/: folders in layers, no circle, internals in one adapter.

Each folder of sweep/ imports only the folders below it in LAYERS (and itself); core/ imports
nothing of sweep/. sweep/__init__.py is the public front: it sits above everything, and no module
of the package imports it for a name it re-exports.
"""

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "sweep")
# sweep/'s layers, bottom to top: "base" is the modules directly in sweep/ (errors, schema, limits...).
LAYERS = ("base", "spec", "stores", "tracking", "report", "run", "cli")
ADAPTER = "sweep.adapters"
COMPILED = "core.compiled"
ENGINE = "core.engine"  # chooses the engine: the only module importing the compiled kernels
# Internals of Optuna and MLflow that only the adapter may name.
PRIVATE = re.compile(
    r"\._storage\b|\._trial_id\b|\._all_grids\b|mlflow\.store\b|mlflow\.utils\b|[\"']fixed_params[\"']"
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str | None = None) -> dict[str, Path]:
    """Dotted name -> file, for every module of core/ and sweep/ (or of one of them)."""
    found = {}
    for top in [package] if package else PACKAGES:
        found |= {module_name(path): path for path in sorted((ROOT / top).rglob("*.py"))}
    return found


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
    """Module -> the project modules it imports (a package's __init__ counts as a module)."""
    names = modules()
    return {name: {m for m in imports(path) if m in names and m != name} for name, path in names.items()}


def layer(module: str) -> str:
    """sweep.spec.study -> "spec"; sweep.errors -> "base"; core.* -> "core"."""
    parts = module.split(".")
    if parts[0] == "core":
        return "core"
    if parts[-1] == "__main__":  # python -m sweep: the command line
        return "cli"
    return parts[1] if len(parts) > 2 or parts[1] in LAYERS else "base"


def reaches(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_graph_is_parsed():
    edges = graph()
    assert {
        "sweep.cli.commands",
        "sweep.run.runner",
        "sweep.schema",
        "sweep.spec.study",
        ADAPTER,
        "core.train",
    } <= edges.keys()
    assert "sweep.schema" in edges["sweep.run.trial"] and "core.model" in edges["core.train"]
    assert {layer(m) for m in edges if m != "sweep"} == {"core", *LAYERS}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle(package):
    edges = graph()
    assert sorted(name for name in edges if name.startswith(package) and name in reaches(name, edges)) == []


def test_each_folder_imports_only_the_folders_below_it():
    order = {"core": -1} | {name: rank for rank, name in enumerate(LAYERS)}
    upward = sorted(
        f"{a} -> {b}"
        for a, targets in graph().items()
        if a != "sweep"
        for b in targets
        if b != "sweep" and order[layer(b)] > order[layer(a)]
    )
    assert upward == []


def test_nothing_imports_the_public_front():
    """`from sweep import x` inside the package names a module, never a name the front hands on."""
    names = modules()
    fronted = sorted(
        f"{name}: {alias.name}"
        for name, path in names.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module == "sweep"
        for alias in node.names
        if f"sweep.{alias.name}" not in names
    )
    assert fronted == []


def test_the_public_front_hands_on_every_name_it_lists():
    import sweep

    assert sweep.__all__ and all(getattr(sweep, name) is not None for name in sweep.__all__)


def test_core_imports_nothing_of_sweep_and_one_module_imports_the_compiled_kernels():
    edges = graph()
    assert sorted(name for name in modules("core") if any(m.startswith("sweep") for m in edges[name])) == []
    assert sorted(name for name, targets in edges.items() if COMPILED in targets) == [ENGINE]


def test_only_tracking_and_the_adapter_import_mlflow():
    users = sorted(
        name
        for name, path in modules("sweep").items()
        if any(m == "mlflow" or m.startswith("mlflow.") for m in imports(path))
    )
    # (the adapter names MLflow's modules without importing them at import; sweep.tracking.served is the
    # logged model's code, which MLflow runs when it loads the model and no module imports; the registry
    # saves and registers that model)
    assert users == ["sweep.tracking.registry", "sweep.tracking.served", "sweep.tracking.tracker"]
    edges = graph()
    assert not any("sweep.tracking.served" in targets for targets in edges.values())
    assert {m for m in edges["sweep.tracking.served"] if m.startswith("sweep")} <= {"sweep.schema"}


def test_private_names_only_in_the_adapter():
    named = sorted(name for name, path in modules("sweep").items() if PRIVATE.search(path.read_text()))
    assert named == [ADAPTER]


def test_every_stored_name_is_defined_once():
    """Attribute and tag names ("mlp_sweep.<...>") are written as text in sweep.schema alone."""
    stored = re.compile(r"[\"']mlp_sweep\.[a-z_]+[\"']")
    assert sorted(name for name, path in modules("sweep").items() if stored.search(path.read_text())) == []
    assert "_PREFIX + " in (ROOT / "sweep" / "schema.py").read_text()


def test_every_third_party_import_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        re.split(r"[<>=!~\[ ;]", dep)[0].lower().replace("_", "-")
        for dep in [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]
    }
    dist = {"tomli_w": "tomli-w", "grpc": "grpcio"}  # import name -> distribution name where they differ
    stdlib = __import__("sys").stdlib_module_names
    used = {m.split(".")[0] for path in modules().values() for m in imports(path)}
    third_party = {dist.get(m, m).lower() for m in used - stdlib - {"core", "sweep", "__future__"}}
    assert third_party - declared == set()


def test_modules_and_functions_stay_short():
    """A module fits in 400 lines (the compiled kernels aside), a function in 80: each can be read whole."""
    long_modules = sorted(
        f"{name}: {n}"
        for name, path in modules().items()
        if name != COMPILED and (n := len(path.read_text().splitlines())) > 400
    )
    long_functions = sorted(
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1}"
        for name, path in modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 80
    )
    assert long_modules == [] and long_functions == []
