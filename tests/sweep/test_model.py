"""The network out of the sweep: weights kept by the best-so-far trials, the registered pyfunc
model (loaded through MLflow in a fresh process), and ``sweep best`` with --export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from optuna.trial import TrialState

from core.model import load_params, predict
from sweep import StorageSpec, Stores, load_data, load_stored_study
from sweep.schema import RESULT_ATTR, RUN_ATTR, TRIAL_TAG, WEIGHTS_ARTIFACT, WEIGHTS_DIR
from tests.sweep.conftest import (
    child_runs,
    copy_stored,
    journal_study,
    one_line_error,
    run_cli,
    tracking_client,
    write_study,
)

#: Loads the registered model as a user would, in a process of its own (no project on its path:
#: the model carries its code), and prints its predictions of the test set.
LOAD = """\
import json, sys
import mlflow, numpy as np, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(f"models:/{sys.argv[2]}/latest")
with np.load(sys.argv[3]) as f:
    X = f["X"]
digits = model.predict(X)
print(json.dumps({"digits": digits.tolist(), "frame_agrees": bool((model.predict(pd.DataFrame(X)) == digits).all()),
                  "signature": str(model.metadata.signature.inputs)}))
"""


def _stored_best(workdir: Path, name: str):
    study = journal_study(workdir, name)
    return study, study.best_trial


def kept_weights(workdir: Path, name: str) -> set[int]:
    """The numbers of the trials whose MLflow runs hold weights."""
    client = tracking_client(workdir)
    runs = {
        r.info.run_id
        for r in child_runs(workdir, name)
        if any(f.path == WEIGHTS_ARTIFACT for f in client.list_artifacts(r.info.run_id, WEIGHTS_DIR))
    }
    return {t.number for t in journal_study(workdir, name).trials if t.user_attrs.get(RUN_ATTR) in runs}


def records(trials, before) -> set[int]:
    """The (maximised) trials at least as good as every trial ``u`` with ``before(t, u)``."""
    return {t.number for t in trials if all(t.value >= u.value for u in trials if before(t, u))}


def versions(workdir: Path, name: str) -> list[tuple[int, int]]:
    """The model versions registered under ``name``, oldest first, as (version, trial number)."""
    found = tracking_client(workdir).search_model_versions(f"name = '{name}'")
    return sorted((int(v.version), int(v.tags[TRIAL_TAG])) for v in found)


def _test_set(workdir: Path, name: str):
    stores = Stores(StorageSpec(str(workdir / "mlruns" / "optuna.journal")), None)
    _, spec = load_stored_study(name, stores, read_only=True)
    return load_data(spec, None).test


@pytest.mark.slow
def test_the_registered_model_predicts_the_test_set_in_a_fresh_process(workdir):
    """Two workers (runs logged through the launcher's relay), a few trials; then MLflow loads
    models:/NAME/latest in a fresh process and predicts the study's test set with the stored
    test accuracy of the best trial."""
    write_study(workdir / "served.toml", name="served", epochs=2)
    assert run_cli("run", "served.toml", "--n-trials", 4, "--workers", 2, "--no-report") == 0
    study, best = _stored_best(workdir, "served")
    test = _test_set(workdir, "served")
    np.savez(workdir / "test.npz", X=test.X)
    uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    out = subprocess.run(
        [sys.executable, "-c", LOAD, uri, "served", str(workdir / "test.npz")],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    accuracy = float(np.mean(np.array(answer["digits"]) == test.y))
    assert accuracy == pytest.approx(best.user_attrs[RESULT_ATTR]["metrics"]["test_accuracy"], abs=1e-12)
    assert answer["frame_agrees"] and "float32" in answer["signature"] and "784" in answer["signature"]

    client = tracking_client(workdir)
    (version,) = client.search_model_versions("name = 'served'")
    assert version.run_id == best.user_attrs[RUN_ATTR] and version.tags[TRIAL_TAG] == str(best.number)
    # only best-so-far trials kept weights: each trial at least as good as all told before it
    # (so the best's), none worse than a trial told before it started (two workers: told in between is a race)
    trials = study.get_trials(states=[TrialState.COMPLETE])
    kept = kept_weights(workdir, "served")
    assert records(trials, lambda t, u: u.datetime_complete < t.datetime_complete) <= kept
    assert kept <= records(trials, lambda t, u: u.datetime_complete < t.datetime_start)
    # resumed with nothing left to do: the same best trial, no new version
    assert run_cli("run", "served.toml", "--n-trials", 4, "--no-report") == 0
    assert len(client.search_model_versions("name = 'served'")) == 1


@pytest.mark.slow
def test_a_new_version_each_time_the_best_trial_changes_and_never_from_a_worker(workdir):
    """In grid order the tiny study's trial #1 beats #0, and #2 and #3 are worse than both (checked
    below). ``sweep run`` registers its best trial at its end when that is a new one; ``sweep
    worker`` never registers, even when it found the new best; one worker keeps exactly the
    weights of the trials that were the best so far when told."""
    write_study(workdir / "grid.toml", name="grid", epochs=1)
    assert run_cli("run", "grid.toml", "--n-trials", 1, "--no-report") == 0
    assert versions(workdir, "grid") == [(1, 0)]
    assert run_cli("worker", "--study", "grid", "--n-trials", 2) == 0
    study = journal_study(workdir, "grid")
    assert study.best_trial.number == 1 and versions(workdir, "grid") == [(1, 0)]  # a new best, not registered
    assert run_cli("run", "grid.toml", "--n-trials", 2, "--no-report") == 0  # nothing left to run
    assert versions(workdir, "grid") == [(1, 0), (2, 1)]
    assert run_cli("run", "grid.toml", "--n-trials", 4, "--no-report") == 0
    study = journal_study(workdir, "grid")
    values = [t.value for t in study.trials]
    assert len(values) == 4 and values[1] > values[0] > max(values[2:]), values  # what the test relies on
    assert versions(workdir, "grid") == [(1, 0), (2, 1)]  # the best did not change: no new version
    assert kept_weights(workdir, "grid") == {0, 1}


def test_best_prints_the_best_trial_and_exports_its_weights(workdir, stored_study, capsys):
    copy_stored(stored_study, workdir)
    study, best = _stored_best(workdir, "tiny")
    metrics = best.user_attrs[RESULT_ATTR]["metrics"]
    assert run_cli("best", "tiny", "--export", "best.npz") == 0
    out = capsys.readouterr().out
    assert f"Best trial #{best.number} of tiny: validation_accuracy {best.value:.6g} (maximize)" in out
    assert f"test_accuracy {metrics['test_accuracy']:.6g}" in out and "network: 784-8-10" in out
    assert (
        "params: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
        in out
    )
    network, params = load_params(workdir / "best.npz")  # (allow_pickle=False)
    test = _test_set(workdir, "tiny")
    assert np.mean(predict(network, params, test.X) == test.y) == pytest.approx(metrics["test_accuracy"], abs=1e-12)


@pytest.mark.parametrize(
    "case, args, phrase",
    [
        ("no study", ["best", "nope"], "no study named 'nope'"),
        ("a directory", ["best", "tiny", "--export", "."], "is a directory"),
        ("no directory", ["best", "tiny", "--export", "missing/best.npz"], "no directory missing"),
        ("a file there", ["best", "tiny", "--export", "tiny.toml"], "already exists"),
    ],
)
def test_best_refuses_with_one_line(workdir, stored_study, capsys, case, args, phrase):
    copy_stored(stored_study, workdir)
    assert run_cli(*args) == 2
    assert phrase in one_line_error(capsys)
    assert not (workdir / "missing").exists()


def test_best_refuses_what_it_cannot_show(workdir, capsys):
    """No tracked run, no weights to export; several objectives, no one best trial."""
    write_study(workdir / "plain.toml", name="plain", epochs=1)
    assert run_cli("run", "plain.toml", "--n-trials", 1, "--no-report", "--no-tracking") == 0
    assert run_cli("best", "plain") == 0  # shown: Optuna holds all of it
    capsys.readouterr()
    assert run_cli("best", "plain", "--export", "w.npz") == 2
    assert "no tracked run, so no saved weights" in one_line_error(capsys)
    assert not (workdir / "w.npz").exists()
    two = '[[objective]]\nmetric = "validation_accuracy"\n\n[[objective]]\nmetric = "training_seconds"'
    write_study(workdir / "two.toml", name="two", epochs=1, extra=two)
    assert run_cli("run", "two.toml", "--n-trials", 1, "--no-report", "--no-tracking") == 0
    capsys.readouterr()
    assert run_cli("best", "two") == 2
    assert "has 2 objectives, so no one best trial" in one_line_error(capsys)
