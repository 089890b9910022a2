"""Fixtures shared by the whole test suite."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


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
