"""Fixtures shared by the whole test suite."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    """One compiled-engine cache for the whole run, filled once before any test: the xdist
    workers and every ``sweep`` they start inherit $NUMBA_CACHE_DIR and load the kernels
    from it (about a second) instead of each compiling them (about 18 s of CPU each)."""
    if hasattr(config, "workerinput") or "NUMBA_CACHE_DIR" in os.environ:
        return  # an xdist worker (its controller made the cache), or a cache chosen by the caller
    config.numba_cache = tempfile.mkdtemp(prefix="mlp-sweep-test-numba-")
    os.environ["NUMBA_CACHE_DIR"] = config.numba_cache
    subprocess.run([sys.executable, "-c", "import core.preload"], cwd=REPO_ROOT, check=False,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                                  os.environ.get("PYTHONPATH")]))})


def pytest_unconfigure(config):
    if getattr(config, "numba_cache", None):
        shutil.rmtree(config.numba_cache, ignore_errors=True)
        os.environ.pop("NUMBA_CACHE_DIR", None)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The shared MNIST files (``../shared/data/mnist`` from the repo root); skip if absent."""
    path = REPO_ROOT.parent / "shared" / "data" / "mnist"
    if not path.is_dir():
        pytest.skip(f"shared MNIST data not found at {path}")
    return path


@pytest.fixture(scope="session", autouse=True)
def private_data_cache(tmp_path_factory):
    """Decoded datasets go to a cache of the test session's own, never the user's."""
    previous = os.environ.get("MLP_SWEEP_CACHE")
    os.environ["MLP_SWEEP_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("MLP_SWEEP_CACHE", None)
    else:
        os.environ["MLP_SWEEP_CACHE"] = previous
