"""Fixtures shared by the whole test suite."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

#: What some tests need from the machine, and which of them a run requires: a test whose need is
#: missing skips, saying why, unless $MLP_SWEEP_REQUIRE names that need (or says "all"), when it
#: fails instead (CI sets it, so that nothing the README promises goes unchecked).
NEEDS = {
    "postgres": "a PostgreSQL server at $MLP_SWEEP_TEST_PG (default 127.0.0.1:5432, user postgres)",
    "mnist": "the MNIST files in ../shared/data/mnist",
    "chromium": "Debian's Chromium (/usr/bin/chromium) and Playwright",
    "root": "unshare --uts (another host name for a worker)",
    "mount": "mount -t tmpfs (a read-only or full file system)",
}
REQUIRE = "MLP_SWEEP_REQUIRE"


def required() -> set[str]:
    """The names in $MLP_SWEEP_REQUIRE: needs, comma-separated, or "all"."""
    return {name.strip() for name in os.environ.get(REQUIRE, "").split(",") if name.strip()}


def need(name: str, available: bool, reason: str) -> None:
    """Go on if ``available``; else skip the test with ``reason``, or fail it with that reason
    when the run requires ``name``."""
    if available:
        return
    if {name, "all"} & required():
        pytest.fail(f"{reason} ({REQUIRE} requires {name}: {NEEDS[name]})", pytrace=False)
    pytest.skip(reason)


PRELOADED = "MLP_SWEEP_TEST_PRELOADED"  # the file the cache's filler touches when it is done
#: The cache's filler: one filler at a time (two runs at once would write one index together).
_FILL = """import fcntl, os, pathlib, sys
with open(os.path.join(os.environ["NUMBA_CACHE_DIR"], ".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        import core.preload
    finally:
        pathlib.Path(sys.argv[1]).touch()
"""
#: The compiled engine's cache for test runs, kept between them in this checkout (numba compiles
#: again what changed: its index is stamped with each source file's time and size;
#: ``pytest --cache-clear`` empties it).
NUMBA_CACHE = REPO_ROOT / ".pytest_cache" / "numba"


def pytest_configure(config):
    """$MLP_SWEEP_REQUIRE names only known needs (a misspelt one would require nothing).

    One compiled-engine cache for the whole run: the xdist workers and every ``sweep`` they
    start inherit $NUMBA_CACHE_DIR and load the kernels from it (about a second) instead of each
    compiling them (about 9-18 s of CPU each). It is filled in the background while the tests
    are collected (on a fresh checkout; later runs find it full); ``compiled_engine_cache`` holds
    the first test back until it is."""
    if unknown := required() - {*NEEDS, "all"}:
        known = ", ".join([*NEEDS, "all"])
        raise pytest.UsageError(f"{REQUIRE}: unknown need {', '.join(sorted(unknown))} (known: {known})")
    if hasattr(config, "workerinput") or "NUMBA_CACHE_DIR" in os.environ:
        return  # an xdist worker (its controller made the cache), or a cache chosen by the caller
    NUMBA_CACHE.mkdir(parents=True, exist_ok=True)
    config.numba_marker = tempfile.mkdtemp(prefix="mlp-sweep-test-numba-")
    os.environ["NUMBA_CACHE_DIR"] = str(NUMBA_CACHE)
    os.environ[PRELOADED] = os.path.join(config.numba_marker, "filled")
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    config.numba_filler = subprocess.Popen(
        [sys.executable, "-c", _FILL, os.environ[PRELOADED]], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": path}
    )


def pytest_unconfigure(config):
    if getattr(config, "numba_marker", None):
        config.numba_filler.kill()
        config.numba_filler.wait()
        shutil.rmtree(config.numba_marker, ignore_errors=True)
        for name in ("NUMBA_CACHE_DIR", PRELOADED):
            os.environ.pop(name, None)


#: Seconds a slow test may take (a whole sweep, a browser), unless it says otherwise: twice
#: pyproject's default for the others. The slowest took under 110 s on 2 loaded cores.
SLOW_TIMEOUT = 600


def pytest_collection_modifyitems(config, items):
    """The slow tests first (a stable sort): the processes then end on short tests, together,
    instead of one starting a long sweep when the other has nothing left to take. Each slow
    test gets SLOW_TIMEOUT unless it has a timeout of its own."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))


@pytest.fixture(scope="session", autouse=True)
def compiled_engine_cache():
    """Wait (before this process's first test) until the run's kernel cache is filled."""
    marker = os.environ.get(PRELOADED)
    deadline = time.monotonic() + 300
    while marker and not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The shared MNIST files (``../shared/data/mnist`` from the repo root): a need ("mnist")."""
    path = REPO_ROOT.parent / "shared" / "data" / "mnist"
    need("mnist", path.is_dir(), f"shared MNIST data not found at {path}")
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
