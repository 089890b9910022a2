"""core/ stays NumPy + standard library, with numba (and its code generator llvmlite) for the compiled engine alone."""

import ast
import subprocess
import sys
from pathlib import Path

HEAVY = ("optuna", "mlflow", "pandas", "matplotlib", "sweep", "mlxtend", "tqdm", "sqlalchemy")


def test_importing_core_loads_no_heavy_dependency():
    code = (
        "import sys, core, core.data, core.model, core.train, core.reference, core.functions;"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_core_imports_only_numpy_numba_and_the_standard_library():
    """Every module-level import in core/ names NumPy, numba (llvmlite, its code generator, comes with it),
    the standard library or core."""
    allowed = set(sys.stdlib_module_names) | {"core", "numpy", "numba", "llvmlite"}
    for path in (Path(__file__).resolve().parents[2] / "core").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.level == 0}
        assert {name.split(".")[0] for name in names} <= allowed, path.name


def test_numba_is_imported_only_with_the_compiled_engine():
    code = "import sys, core, core.packed, core.engine, core.reference; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
