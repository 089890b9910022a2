"""Inputs that would exhaust the machine, through the installed ``sweep`` console script in a temp dir:
refused with one line and exit 2, nothing stored, and without large allocations (peak RSS)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sweep.pg import SWEEP

STUDY = Path(__file__).resolve().parents[2] / "studies" / "homework-grid-5k.toml"
PEAK_RSS_MB = 300  # a refusal needs the interpreter and its imports (about 60 MB), nothing of the input's size
# Runs argv[2:] and writes its peak RSS to argv[1]. A small process of its own starts it: a child
# forked straight from the (large) test process would report the test process's RSS as its peak.
MEASURE = (
    "import pathlib, resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
    "pathlib.Path(sys.argv[1]).write_text(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
    "sys.exit(code)"
)
ETA = 'eta = { type = "float", low = 0.08, high = 0.18, step = 0.01 }'

# name: (how the shipped study is changed, extra flags)
CASES = {
    "billion-hidden-units": (lambda s: s.replace("sizes = [784, 15, 10]", "sizes = [784, 1000000000, 10]"), []),
    "grid-of-1e15-points": (lambda s: s.replace(ETA, ETA.replace("0.01", "1e-15")), []),
    "billion-epochs": (lambda s: s.replace("epochs = 10", "epochs = 1000000000"), []),
    "billion-population": (lambda s: s.replace('name = "grid"', 'name = "nsga2"\npopulation_size = 1000000000'), []),
    "nested-100000-deep": (lambda s: "a = " + "[" * 100_000 + "]" * 100_000 + "\n", []),
    "500-workers": (lambda s: s, ["--workers", "500"]),
    "timeout-nan": (lambda s: s, ["--timeout", "nan"]),
}


@pytest.mark.parametrize("case", CASES)
def test_an_exhausting_input_is_refused_by_the_real_executable_without_allocating(tmp_path, case):
    assert Path(SWEEP[0]).is_file(), f"no console script {SWEEP[0]}: pip install -e ."
    edit, flags = CASES[case]
    study = tmp_path / "study.toml"
    study.write_text(edit(STUDY.read_text()))
    assert flags or study.read_text() != STUDY.read_text()  # the edit took
    out, err, rss = tmp_path / "out", tmp_path / "err", tmp_path / "rss"
    with out.open("w") as stdout, err.open("w") as stderr:
        code = subprocess.call(
            [sys.executable, "-c", MEASURE, str(rss), *SWEEP, "run", str(study), *flags],
            cwd=tmp_path,
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "PYTHONWARNINGS": "default"},
        )
    message = err.read_text()
    assert code == 2, (out.read_text(), message)
    assert len(message.strip().splitlines()) == 1 and "Traceback" not in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["err", "out", "rss", "study.toml"]  # no mlruns/, reports/
    peak = int(rss.read_text()) / 1024  # Linux reports KiB
    assert peak < PEAK_RSS_MB, f"{case}: peak RSS {peak:.0f} MB"
