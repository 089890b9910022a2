"""sweep.tracking.tracker against a real SQLite MLflow store in a temp dir: runs, metrics, resume, concurrency."""

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sweep.tracking import store
from sweep.tracking import tracker as tracking

store.configure()  # before mlflow is imported: it turns MLflow's telemetry off

from mlflow.tracking import MlflowClient  # noqa: E402  isort: skip

from core.data import Dataset, Split
from core.history import CURVES, EpochRecord
from sweep.cli.options import DEFAULT_STORE_DIR, tracking_uri_in
from sweep.errors import UsageError
from sweep.schema import BEST_PARAMS_TAG
from sweep.stores.urls import redact
from sweep.tracking.store import artifact_root_for
from sweep.tracking.tracker import Tracker, study_views
from sweep.tracking.views import logged_metric, run_label, runs_view, view_path
from sweep.words import show_number
from tests.sweep.conftest import tracking_db

STATES = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}  # pruned: not drawn as a crash


@pytest.fixture
def uri(tmp_path: Path, empty_tracking_db: Path) -> str:
    """The default tracking store of tmp_path, an empty MLflow database (migrated once per run)."""
    assert tracking_db(empty_tracking_db, tmp_path) == tracking_uri_in(tmp_path)
    return tracking_uri_in(tmp_path)


def record(epoch: int, training_cost: float | None = 1.0) -> EpochRecord:
    return EpochRecord(
        epoch,
        training_cost and training_cost / epoch,
        0.5 + epoch / 100,
        2.0 / epoch,
        0.4 + epoch / 100,
        0.01 * epoch,
        0.001,
    )


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def tiny_data(seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)

    def split(n: int) -> Split:
        return Split(rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n))

    return Dataset("mnist-toy", split(6), split(4), split(2))


def test_study_parent_and_trials_round_trip(uri: str, tmp_path: Path) -> None:
    tracker = Tracker(uri, "study-a")
    data = tiny_data()
    view = runs_view(["eta", "batch_size"], ["validation_accuracy", "test_accuracy"])
    parent = tracker.parent_run(
        description="a test study",
        config='name = "study-a"\n',
        data=data,
        view=view,
        storage="postgresql://sweep:s3cret@db/optuna",
    )
    for number, state in enumerate(STATES):
        eta = 0.1 * (number + 1) + 0.2  # 0.30000000000000004 first
        run = tracker.start_trial(
            parent,
            number,
            {"eta": eta, "batch_size": 10, "n_test": None, "sizes": "784-30-10"},
            tags={"mlp_sweep.worker": "w1"},
            searched={"eta": eta, "batch_size": 10},
            data=data,
        )
        for epoch in range(1, 11):
            run.log_epoch(record(epoch, training_cost=None if state == "FAIL" else 1.0))
        run.finish(
            state,
            {"test_accuracy": 0.9 + number / 100, "gap": 0.01, "training_seconds": 1.5},
            {"mlp_sweep.reason": state.lower()},
        )

    client = MlflowClient(uri)
    experiment = client.get_experiment(tracker.experiment_id)
    assert experiment.name == "study-a"
    assert experiment.artifact_location == (tmp_path / "artifacts").as_uri() == artifact_root_for(uri)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the model-training view
    assert experiment.tags["mlflow.note.content"] == "a test study"  # its Description column
    shown = json.loads(experiment.tags["mlflow.sharedViewState.mlp-sweep"])["selectedColumns"]
    assert shown[:4] == [
        "params.`eta`",
        "params.`batch_size`",
        "metrics.`validation_accuracy`",
        "metrics.`summary/test_accuracy`",
    ]
    assert {"tags.`mlp_sweep.state`", "tags.`mlp_sweep.best`", "attributes.`Dataset`"} <= set(shown)
    parent_run = client.get_run(parent)
    assert parent_run.info.run_name == "study-a" and parent_run.info.status == "RUNNING"
    assert parent_run.data.tags["mlp_sweep.role"] == "parent"
    assert parent_run.data.tags["mlflow.note.content"] == "a test study"
    assert parent_run.data.tags["mlp_sweep.storage"] == "postgresql://sweep:***@db/optuna"
    assert parent_run.data.params == {}  # the settings are one file instead:
    assert (tmp_path / "artifacts" / parent / "artifacts" / "study.toml").read_text() == 'name = "study-a"\n'

    runs = tracker.trial_runs(parent)
    assert [r.info.run_name for r in runs] == [
        "#0000 eta=0.3 batch_size=10",
        "#0001 eta=0.4 batch_size=10",
        "#0002 eta=0.5 batch_size=10",
    ]
    for number, (run, (state, status)) in enumerate(zip(runs, STATES.items())):
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent and tags["mlp_sweep.study"] == "study-a"
        assert tags["mlp_sweep.trial"] == str(number) and tags["mlp_sweep.role"] == "trial"
        assert tags["mlp_sweep.worker"] == "w1" and tags["mlp_sweep.reason"] == state.lower()
        assert tags["mlp_sweep.state"] == state
        assert run.data.params == {"eta": f"{0.1 * number + 0.3:.1f}", "batch_size": "10", "sizes": "784-30-10"}
        assert run.info.status == status and run.info.end_time is not None
        for key in (*CURVES, "epoch_seconds"):
            expected = [] if (state == "FAIL" and key == "training_cost") else list(range(1, 11))
            assert steps(client, run.info.run_id, key) == expected, key
        history = sorted(client.get_metric_history(run.info.run_id, "validation_cost"), key=lambda m: m.step)
        assert [m.value for m in history] == pytest.approx([2.0 / epoch for epoch in range(1, 11)])
        assert run.data.metrics["validation_accuracy"] == pytest.approx(0.5)  # latest = epoch 10
        assert run.data.metrics["epoch_seconds"] == pytest.approx(0.1)
        assert run.data.metrics["summary/test_accuracy"] == pytest.approx(0.9 + number / 100)
        assert run.data.metrics["summary/gap"] == 0.01 and run.data.metrics["summary/training_seconds"] == 1.5
        assert "test_accuracy" not in run.data.metrics and steps(client, run.info.run_id, "summary/gap") == [0]
        (logged,) = run.inputs.dataset_inputs
        assert logged.dataset.name == "mnist-toy" and len(logged.dataset.digest) == 8
        assert json.loads(logged.dataset.profile) == {"train": 6, "validation": 4, "test": 2}
        assert {t.key: t.value for t in logged.tags} == {"mlflow.data.context": "training"}
    assert client.get_run(parent).inputs.dataset_inputs[0].dataset.digest == logged.dataset.digest
    other = Tracker(uri, "study-a")._dataset_input(tiny_data(seed=1))
    assert other.dataset.digest != logged.dataset.digest  # the digest is of the arrays

    resumed = Tracker(uri, "study-a")
    assert resumed.experiment_id == tracker.experiment_id
    assert resumed.parent_run() == parent
    assert resumed.parent_run(parent) == parent
    assert resumed.parent_run("f" * 32) == parent  # a stale id: found again by its tag
    parents = client.search_runs([tracker.experiment_id], "tags.`mlp_sweep.role` = 'parent'")
    assert [r.info.run_id for r in parents] == [parent]


def test_the_best_mark_moves_with_the_best_trial(uri: str) -> None:
    tracker = Tracker(uri, "s")
    parent = tracker.parent_run()
    runs = [tracker.start_trial(parent, n, {}) for n in range(3)]
    for run in runs:
        run.finish("COMPLETE")
    tracker.finish_parent(
        parent, metrics={"trials/complete": 3}, tags={BEST_PARAMS_TAG: "#0001"}, best={runs[1].run_id: "best"}
    )
    client = MlflowClient(uri)
    assert [r.data.tags.get("mlp_sweep.best") for r in tracker.trial_runs(parent)] == [None, "best", None]
    assert client.get_run(parent).data.tags[BEST_PARAMS_TAG] == "#0001"
    tracker.parent_run(parent)  # resumed: the next best is another
    tracker.finish_parent(parent, best={runs[0].run_id: "pareto", runs[2].run_id: "pareto"})
    assert [r.data.tags.get("mlp_sweep.best") for r in tracker.trial_runs(parent)] == ["pareto", None, "pareto"]


def test_names_and_views() -> None:
    assert (
        run_label(12, {"batch_size": 20, "eta": 0.1 + 0.2, "activation": "relu"})
        == "#0012 batch_size=20 eta=0.3 activation=relu"
    )
    assert show_number(1.23456789e-5) == "1.235e-05" and show_number(3) == "3" and show_number("tanh") == "tanh"
    assert logged_metric("validation_cost") == "validation_cost" and logged_metric("gap") == "summary/gap"
    assert view_path("7") == "#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=mlp-sweep"
    assert view_path("7", "abc") == "#/experiments/7/runs/abc?workflowType=machine_learning"


def test_study_views_lists_tracked_studies_and_creates_nothing(uri: str, tmp_path: Path) -> None:
    unmade = tracking_uri_in(tmp_path / "unmade")
    assert study_views(unmade) == {} and not (tmp_path / "unmade").exists()
    assert study_views(uri) == {}
    tracker = Tracker(uri, "s")
    tracker.parent_run(view=runs_view(["eta"], ["gap"]))
    Tracker(uri, "untracked-by-us")  # an experiment without the view: not a study's
    assert study_views(uri) == {"s": view_path(tracker.experiment_id)}


def test_finish_parent_then_resume_runs_again(uri: str) -> None:
    tracker = Tracker(uri, "s")
    parent = tracker.parent_run()
    tracker.finish_parent(parent, "FINISHED", {"best_validation_accuracy": 0.97})
    client = MlflowClient(uri)
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.metrics == {"best_validation_accuracy": 0.97}
    assert Tracker(uri, "s").parent_run(parent) == parent
    assert client.get_run(parent).info.status == "RUNNING"


def test_epochs_wait_in_the_buffer_until_flush_every_s(uri: str, monkeypatch) -> None:
    tracker = Tracker(uri, "s")
    client = MlflowClient(uri)
    monkeypatch.setattr(tracking, "FLUSH_EVERY_S", 3600.0)
    buffered = tracker.start_trial(tracker.parent_run(), 0, {})
    buffered.log_epoch(record(1))
    assert steps(client, buffered.run_id, "validation_cost") == []

    monkeypatch.setattr(tracking, "FLUSH_EVERY_S", 0.0)
    live = tracker.start_trial(tracker.parent_run(), 1, {})
    for epoch in (1, 2, 3):
        live.log_epoch(record(epoch))
    assert steps(client, live.run_id, "validation_cost") == [1, 2, 3]  # before finish
    live.finish("PRUNED")
    assert steps(client, live.run_id, "validation_cost") == [1, 2, 3]
    assert client.get_run(live.run_id).info.status == "FINISHED"


def test_batches_beyond_mlflow_limits_are_split(uri: str) -> None:
    tracker = Tracker(uri, "s")
    params = {f"p{i}": i for i in range(250)} | {"long": "x" * 7000}
    run = tracker.start_trial(tracker.parent_run(), 0, params)
    for epoch in range(1, 301):  # 1500 buffered metric values
        run.log_epoch(record(epoch))
    run.finish("COMPLETE", tags={f"mlp_sweep.t{i}": i for i in range(150)})
    client = MlflowClient(uri)
    data = client.get_run(run.run_id).data
    assert len(data.params) == 251 and data.params["p249"] == "249"
    assert len(data.params["long"]) == 6000 and data.params["long"].endswith("…")
    assert data.tags["mlp_sweep.t149"] == "149"
    assert steps(client, run.run_id, "training_accuracy") == list(range(1, 301))


def test_end_run_from_another_tracker_kills_with_tags(uri: str) -> None:
    owner = Tracker(uri, "s")
    run = owner.start_trial(owner.parent_run(), 7, {"eta": 1})
    run.log_epoch(record(1))
    Tracker(uri, "s").end_run(run.run_id, "KILLED", {"mlp_sweep.reason": "worker 123 died"})
    ended = MlflowClient(uri).get_run(run.run_id)
    assert ended.info.status == "KILLED" and ended.info.end_time is not None
    assert ended.data.tags["mlp_sweep.reason"] == "worker 123 died" and ended.data.tags["mlp_sweep.state"] == "FAIL"


def test_finish_rejects_a_state_that_is_not_final(uri: str) -> None:
    tracker = Tracker(uri, "s")
    run = tracker.start_trial(tracker.parent_run(), 0, {})
    with pytest.raises(ValueError, match="RUNNING"):
        run.finish("RUNNING")


def test_log_artifacts_lands_beside_the_database(uri: str, tmp_path: Path) -> None:
    tracker = Tracker(uri, "s")
    parent = tracker.parent_run()
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "curves.csv").write_text("epoch,cost\n1,0.5\n")
    tracker.log_artifacts(parent, tmp_path / "report")
    assert (tmp_path / "artifacts" / parent / "artifacts" / "curves.csv").is_file()


def test_a_deleted_experiment_is_a_usage_error(uri: str) -> None:
    MlflowClient(uri).delete_experiment(Tracker(uri, "s").experiment_id)
    with pytest.raises(UsageError, match="deleted"):
        Tracker(uri, "s")


def _log_from_worker(uri: str, worker: int) -> str:
    """One of the concurrent workers: its own Tracker, 15 trials, every epoch flushed at once."""
    tracking.FLUSH_EVERY_S = 0.0
    tracker = Tracker(uri, "race")
    parent = tracker.parent_run()
    for number in range(worker * 15, worker * 15 + 15):
        run = tracker.start_trial(parent, number, {"eta": 0.1, "sizes": [784, 30, 10]})
        for epoch in range(1, 11):
            run.log_epoch(record(epoch))
        run.finish("COMPLETE", {"test_accuracy": 0.9})
    return parent


@pytest.mark.slow
def test_four_processes_share_one_fresh_sqlite_database(tmp_path: Path) -> None:
    uri = tracking_uri_in(tmp_path / "store")  # created by the workers, all at once
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        parents = pool.starmap(_log_from_worker, [(uri, worker) for worker in range(4)])
    assert len(set(parents)) == 1
    runs = Tracker(uri, "race").trial_runs(parents[0])
    assert [int(r.data.tags["mlp_sweep.trial"]) for r in runs] == list(range(60))
    client = MlflowClient(uri)
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in (*CURVES, "epoch_seconds"):
            assert steps(client, run.info.run_id, key) == list(range(1, 11))


class Flaky:
    """A store call that raises the given errors in turn, then succeeds."""

    def __init__(self, *errors: Exception) -> None:
        self.errors, self.calls = list(errors), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def locked_error() -> Exception:
    error = RuntimeError("store call failed")  # as MLflow wraps it: the SQLite error is the cause
    error.__cause__ = sqlite3.OperationalError("database is locked")
    return error


def test_retry_waits_out_a_locked_database_and_nothing_else(monkeypatch) -> None:
    monkeypatch.setattr(store.time, "sleep", lambda seconds: None)
    call = Flaky(locked_error(), locked_error())
    assert store.retry(call) == "done" and call.calls == 3

    call = Flaky(sqlite3.OperationalError("no such table: runs"))
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        store.retry(call)
    assert call.calls == 1

    monkeypatch.setattr(store, "RETRY_FOR_S", 0.0)
    call = Flaky(locked_error(), locked_error())
    with pytest.raises(RuntimeError):
        store.retry(call)
    assert call.calls == 1


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql://user:pass@host/db", "postgresql://user:***@host/db"),
        ("postgresql+psycopg2://u:p@ss/w:rd@db:5432/optuna", "postgresql+psycopg2://u:***@db:5432/optuna"),
        ("redis://:secret@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("postgresql://u@h/db?sslmode=require&password=secret", "postgresql://u@h/db?sslmode=require&password=***"),
        ("storage postgresql://u:pw@h/db is down", "storage postgresql://u:***@h/db is down"),
        ("postgresql://user@host:5432/db", "postgresql://user@host:5432/db"),
        ("sqlite:////tmp/mlruns/mlflow.db", "sqlite:////tmp/mlruns/mlflow.db"),
        ("http://localhost:5000", "http://localhost:5000"),
        ("mlruns/optuna.journal", "mlruns/optuna.journal"),
    ],
)
def test_redact_hides_passwords_only(url: str, expected: str) -> None:
    assert redact(url) == expected


def test_uris(tmp_path: Path) -> None:
    assert tracking_uri_in(DEFAULT_STORE_DIR) == "sqlite:///mlruns/mlflow.db"
    assert tracking_uri_in(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert artifact_root_for(tracking_uri_in(tmp_path)) == (tmp_path / "artifacts").as_uri()
    assert artifact_root_for("http://127.0.0.1:5000") is None
    assert artifact_root_for("sqlite:///:memory:") is None


def test_importing_is_light_and_tracking_is_silent(tmp_path: Path) -> None:
    code = f"""
import sys
import sweep.tracking.tracker as t
assert "mlflow" not in sys.modules
tracker = t.Tracker({tracking_uri_in(tmp_path)!r}, "s")  # a fresh database: migrations run
tracker.start_trial(tracker.parent_run(), 0, {{"eta": 1}}).finish("COMPLETE", {{"test_accuracy": 1}})
from mlflow.telemetry import get_telemetry_client
from mlflow.telemetry.utils import is_telemetry_disabled
print(is_telemetry_disabled(), get_telemetry_client())
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "MLFLOW_DISABLE_TELEMETRY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert (out.stdout, out.stderr) == ("True None\n", "")  # no telemetry, nothing logged


def test_a_study_without_a_description_gets_no_note(uri: str) -> None:
    tracker = Tracker(uri, "study-b")
    parent = tracker.parent_run(description=None)
    assert "mlflow.note.content" not in MlflowClient(uri).get_run(parent).data.tags  # not the text "None"
    assert "mlflow.note.content" not in MlflowClient(uri).get_experiment(tracker.experiment_id).tags
