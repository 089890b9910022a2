"""Fixtures shared by the whole test suite."""

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
