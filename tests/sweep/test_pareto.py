"""Multi-objective reports: the Pareto front marked in trials.csv, listed in full in summary.txt,
never cut short without saying so on stdout; `sweep refine` searches the front."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from sweep import StorageSpec, Stores, load_spec
from sweep.cli.study import SHOWN_PARETO, summary
from tests.sweep.bad_studies import TWO_OBJECTIVES
from tests.sweep.conftest import journal_study, run_cli, write_study
from tests.sweep.test_report import N, make_study

NAME = "tiny-multi"


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """A finished real grid study (6 trials, 300 images, 2 epochs) on validation accuracy
    (maximize) and training seconds (minimize), its report, and what `sweep run` printed."""
    root = tmp_path_factory.mktemp("multi")
    cwd, out = os.getcwd(), io.StringIO()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(out):
            assert (
                run_cli("run", write_study(root / "multi.toml", name=NAME, extra=TWO_OBJECTIVES), "--no-tracking") == 0
            )
    finally:
        os.chdir(cwd)
    study = journal_study(root, NAME)
    assert len(study.directions) == 2 and len(study.trials) == 6
    return root, study, out.getvalue()


def front(study) -> set[int]:
    return {t.number for t in study.best_trials}


def test_pareto_column_is_the_front(multi):
    root, study, _ = multi
    trials = pd.read_csv(root / "reports" / NAME / "trials.csv")
    assert trials["pareto"].dtype == bool
    assert set(trials.loc[trials["pareto"], "number"]) == front(study)
    assert len(trials) == len(study.trials)


def test_summary_txt_lists_every_pareto_trial(multi):
    root, study, _ = multi
    text = (root / "reports" / NAME / "summary.txt").read_text()
    assert f"Pareto front: {len(study.best_trials)} trials" in text
    listed = {int(n) for n in re.findall(r"^  #(\d+)  validation_accuracy", text, re.MULTILINE)}
    assert listed == front(study)
    for t in study.best_trials:
        line = next(line for line in text.splitlines() if line.startswith(f"  #{t.number}  "))
        assert f"validation_accuracy {t.values[0]:.4g}" in line and f"training_seconds {t.values[1]:.4g}" in line
        assert all(f"{name}={value:.4g}" in line for name, value in t.params.items())
    assert "Best region: the Pareto front of 6 completed trials" in text


def test_run_stdout_shows_the_front_or_says_how_many_more(multi):
    root, study, out = multi
    k = len(study.best_trials)
    assert f"Pareto front: {k} trials" in out
    shown = {int(n) for n in re.findall(r"^Pareto trial #(\d+):", out, re.MULTILINE)}
    assert shown <= front(study) and len(shown) == min(k, SHOWN_PARETO)
    more = re.findall(r"\.\.\. and (\d+) more, see (\S+)$", out, re.MULTILINE)
    if k > SHOWN_PARETO:
        assert more == [(str(k - len(shown)), str(Path("reports") / NAME / "summary.txt"))]
    else:
        assert more == [] and shown == front(study)


def test_report_stdout_names_every_pareto_trial(multi, monkeypatch, capsys):
    root, study, _ = multi
    monkeypatch.chdir(root)
    capsys.readouterr()
    assert run_cli("report", NAME, "--no-tracking", "--out", root / "again") == 0
    region_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Best region"))
    assert {int(n) for n in re.findall(r"#(\d+)", region_line)} == front(study)


def test_refine_searches_the_front_and_enqueues_it(multi, monkeypatch):
    root, study, _ = multi
    monkeypatch.chdir(root)
    (root / "studies").mkdir(exist_ok=True)
    assert run_cli("refine", NAME, "--out", root / "studies" / "refined.toml") == 0
    refined = load_spec(root / "studies" / "refined.toml")
    assert "Pareto front" in refined.description
    points = [dict(t.params) for t in study.best_trials]
    for name, param in refined.searched.items():  # a range around every Pareto trial
        assert all(param.contains(point[name]) for point in points), name
    for name in refined.space.keys() - refined.searched.keys():  # or the one value they share
        assert {point[name] for point in points} == {refined.space[name].value}
    expected = {frozenset((k, v) for k, v in point.items() if k in refined.searched) for point in points} - {
        frozenset()
    }
    assert len(refined.enqueue) == len(expected) and {frozenset(e.items()) for e in refined.enqueue} == expected


@pytest.fixture
def spec(tmp_path):
    return load_spec(write_study(tmp_path / "tiny.toml"))  # (summary reads it for hidden2 alone)


def test_stdout_never_cuts_the_front_short_silently(spec):
    study = make_study(n_objectives=2)  # all N completed trials are on the front
    assert len(study.best_trials) == N > SHOWN_PARETO
    stores = Stores(StorageSpec("unused.journal"), None)
    text = summary(study, spec, stores, Path("reports") / "x")
    assert f"Pareto front: {N} trials" in text
    assert re.findall(r"^Pareto trial #(\d+):", text, re.MULTILINE) == [str(i) for i in range(19, 14, -1)]
    assert text.splitlines()[-1] == f"... and {N - SHOWN_PARETO} more, see {Path('reports') / 'x' / 'summary.txt'}"
    assert f"... and {N - SHOWN_PARETO} more, `sweep report" in summary(study, spec, stores)


def test_single_objective_stdout_unchanged(spec):
    text = summary(make_study(), spec, Stores(StorageSpec("unused.journal"), None))
    assert "Pareto" not in text and "more" not in text
    assert re.findall(r"^Best trial #(\d+):", text, re.MULTILINE) == ["19"]
