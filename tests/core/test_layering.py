"""core/ stays pure NumPy + standard library."""

import subprocess
import sys

HEAVY = ("optuna", "mlflow", "pandas", "matplotlib", "sweep", "mlxtend", "tqdm", "sqlalchemy")


def test_importing_core_loads_no_heavy_dependency():
    code = ("import sys, core, core.data, core.model, core.train, core.reference, core.functions;"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
