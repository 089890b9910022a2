"""Whole sweeps through the launcher: grids, workers, tracking, pruning, failures, resume."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import signal
import threading
from collections import Counter

import pandas as pd
import pytest
from optuna.trial import TrialState

from core.history import EpochRecord
from sweep import StorageSpec, Stores, create_or_resume, load_data, load_spec
from sweep.limits import MAX_EPOCHS
from sweep.run.study import Budget, join_study
from sweep.run.worker import Worker
from sweep.spec.samplers import SAMPLERS
from sweep.tracking.relay import Relay, RelayedTracker
from sweep.tracking.views import logged_metric
from tests.sweep.conftest import child_runs, journal_study, overlapping, run_cli, tracking_client, write_study
from tests.sweep.pg import NEVER_PRUNE, check_agreement, finish, held_env, start_sweep, stopped, wait_until

GRID = {(b, e) for b in (10, 20, 30) for e in (0.1, 0.2)}


def points(study, states=(TrialState.COMPLETE,)):
    return [(t.params["batch_size"], round(t.params["eta"], 6)) for t in study.trials if t.state in states]


@pytest.mark.parametrize("workers", [1, 2])
def test_grid_runs_every_point_exactly_once_and_tracks_every_trial(workdir, workers):
    study_file = write_study(workdir / "tiny.toml", epochs=3)
    assert run_cli("run", study_file, "--workers", workers) == 0
    study = journal_study(workdir, "tiny")
    assert Counter(points(study)) == Counter(GRID)
    assert len(study.trials) == 6
    runs = child_runs(workdir, "tiny")
    assert len(runs) == len(study.trials)
    assert {r.info.status for r in runs} == {"FINISHED"}
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1
    client = tracking_client(workdir)
    for run in runs:
        for curve in ("training_cost", "training_accuracy", "validation_cost", "validation_accuracy"):
            history = client.get_metric_history(run.info.run_id, curve)
            assert [m.step for m in history] == [1, 2, 3]
        assert {"summary/test_accuracy", "summary/gap", "summary/best_validation_accuracy"} <= set(run.data.metrics)
        assert run.data.params["epochs"] == "3" and run.data.params["dataset"] == "mnist-5k"
        assert "None" not in run.data.params.values() and "n_train" in run.data.params  # (n_test is all: left out)
        trial = study.trials[int(run.data.tags["mlp_sweep.trial"])]
        assert (
            run.info.run_name == f"#{trial.number:04d} batch_size={trial.params['batch_size']} "
            f"eta={trial.params['eta']:.4g}"
        )
        packed = "pack of 2: seconds are the pack's, shared equally"  # η packs; two workers may split a pack
        assert run.data.tags["mlp_sweep.timing"] in ({packed} if workers == 1 else {packed, "own"})
    parent = client.get_run(parents.pop())
    best = study.best_trial
    assert parent.data.metrics == {
        "trials/complete": 6,
        "trials/pruned": 0,
        "trials/failed": 0,
        "trials/best": best.number,
        "validation_accuracy": best.value,
    }
    assert [int(r.data.tags["mlp_sweep.trial"]) for r in runs if "mlp_sweep.best" in r.data.tags] == [best.number]
    assert parent.data.tags["mlp_sweep.best_run"].endswith(
        best.user_attrs["mlp_sweep.run_id"] + "?workflowType=machine_learning"
    )
    for t in study.trials:
        assert len(t.user_attrs["mlp_sweep.result"]["history"]["epoch"]) == 3


ENQUEUE = "[[enqueue]]\nbatch_size = 20\neta = 0.2\n\n[[enqueue]]\nbatch_size = 30\n"  # not the grid's first points


@pytest.mark.parametrize("sampler, workers", [("grid", 1), ("grid", 2), ("bruteforce", 1)])
def test_enqueued_points_count_as_their_grid_points(workdir, sampler, workers):
    """Enqueued trials take the first trial numbers, yet every point runs once (a partial one
    is made a whole grid point); the budget stays the grid's size."""
    study_file = write_study(workdir / "tiny.toml", sampler=sampler, epochs=1, extra=ENQUEUE)
    assert run_cli("run", study_file, "--workers", workers, "--no-tracking", "--no-report") == 0
    study = journal_study(workdir, "tiny")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * len(GRID)
    assert Counter(points(study)) == Counter(GRID)
    assert points(study)[0] == (20, 0.2) and points(study)[1][0] == 30


def test_a_trial_that_died_while_sampling_is_run_again_with_its_whole_point(workdir):
    study_file = write_study(workdir / "tiny.toml", epochs=1)
    study = create_or_resume(load_spec(study_file), Stores(StorageSpec("mlruns/optuna.journal"), None)).study
    study.enqueue_trial({"batch_size": 20, "eta": 0.2})
    study.ask().suggest_int("batch_size", 10, 30, step=10)  # its worker died here: eta not sampled, no name
    assert run_cli("run", study_file, "--no-tracking", "--no-report") == 0
    study = journal_study(workdir, "tiny")
    assert study.trials[0].state == TrialState.FAIL and study.trials[0].params == {"batch_size": 20}
    (copy,) = [t for t in study.trials if t.user_attrs.get("mlp_sweep.retry_of") == 0]
    assert copy.params == {"batch_size": 20, "eta": 0.2}
    assert Counter(points(study)) == Counter(GRID)


def test_resume_repeats_nothing(workdir):
    study_file = write_study(workdir / "tiny.toml")
    assert run_cli("run", study_file, "--n-trials", 2, "--no-report") == 0
    assert len(journal_study(workdir, "tiny").trials) == 2
    assert run_cli("run", study_file, "--no-report") == 0
    study = journal_study(workdir, "tiny")
    assert Counter(points(study)) == Counter(GRID)
    assert run_cli("run", study_file, "--no-report") == 0  # nothing left to do
    assert len(journal_study(workdir, "tiny").trials) == 6
    assert len(child_runs(workdir, "tiny")) == 6


def test_pruned_and_diverged_trials_are_recorded_as_such(workdir):
    extra = '[pruner]\nname = "threshold"\nlower = 0.99\n'
    study_file = write_study(workdir / "tiny.toml", sampler="grid", epochs=4, extra=extra)
    assert run_cli("run", study_file, "--n-trials", 2, "--no-report") == 0
    study = journal_study(workdir, "tiny")
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    for t in study.trials:
        assert t.user_attrs["mlp_sweep.result"]["pruned_at_epoch"] == 1
        assert len(t.user_attrs["mlp_sweep.result"]["history"]["epoch"]) == 1
    runs = child_runs(workdir, "tiny")
    assert {r.info.status for r in runs} == {"FINISHED"}  # as the pruner asked, not a crash
    assert {r.data.tags["mlp_sweep.state"] for r in runs} == {"PRUNED"}
    assert {r.data.tags["mlp_sweep.pruned_at_epoch"] for r in runs} == {"1"}


def test_with_at_timeout_stop_the_run_ends_at_its_timeout_and_running_trials_complete(workdir):
    """Trials still training at the timeout (a pack of two) end after their current epoch and
    complete with what they reached, saying why; no trial starts after it."""
    extra = '[budget]\ntimeout = 3\nat_timeout = "stop"\n'
    study_file = write_study(workdir / "tiny.toml", sampler="grid", epochs=MAX_EPOCHS, extra=extra)
    # ten times the images: the epochs take about 25 s, far past the timeout even when the
    # launch itself takes most of it (300 images: 5000 epochs once ended within 1.3 s)
    text = study_file.read_text()
    assert "n_train = 300\n" in text
    study_file.write_text(text.replace("n_train = 300\n", "n_train = 3000\n"))
    assert run_cli("run", study_file, "--no-tracking", "--no-report") == 0
    trials = journal_study(workdir, "tiny").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2  # the first claim: one pack of the grid
    for t in trials:
        result = t.user_attrs["mlp_sweep.result"]
        epochs = len(result["history"]["epoch"])
        assert 1 <= epochs < MAX_EPOCHS and result["metrics"]["epochs_run"] == epochs
        assert result["reason"] == f"stopped at the run's timeout, after epoch {epochs}"
        assert t.value == result["history"]["validation_accuracy"][-1]


NOT_LEARNING = re.compile(r"^(non-finite \w+( cost)?|(training|validation) (cost|accuracy) \S+) at epoch (\d+)\b")


def test_trials_that_do_not_learn_are_pruned_with_their_reason_and_the_sweep_goes_on(workdir):
    """η = 50 and 1e12 for every activation × cost pair: pruned, the reason in Optuna, MLflow and
    trials.csv; η = 0.5 of every pair, packed with them, completes."""
    text = write_study(workdir / "tiny.toml", epochs=4).read_text()
    space = text.index("[space]")
    text = (
        text[:space].replace("epochs = 4", "epochs = 4\nbatch_size = 10")
        + """[space]
activation = { type = "categorical", choices = ["relu", "sigmoid"] }
cost = { type = "categorical", choices = ["cross_entropy", "quadratic"] }
eta = { type = "categorical", choices = [0.5, 50.0, 1e12] }
"""
    )
    (workdir / "tiny.toml").write_text(text)
    assert run_cli("run", workdir / "tiny.toml") == 0
    study = journal_study(workdir, "tiny")
    assert len(study.trials) == 12
    healthy = [t for t in study.trials if t.params["eta"] < 1]
    stopped = [t for t in study.trials if t.params["eta"] > 1]
    assert {t.state for t in healthy} == {TrialState.COMPLETE} and len(healthy) == 4
    assert {t.state for t in stopped} == {TrialState.PRUNED} and len(stopped) == 8
    assert max(t.number for t in healthy) > min(t.number for t in stopped)  # the sweep went on
    runs = {int(r.data.tags["mlp_sweep.trial"]): r for r in child_runs(workdir, "tiny")}
    report = pd.read_csv(workdir / "reports" / "tiny" / "trials.csv").set_index("number")
    for t in stopped:
        result = t.user_attrs["mlp_sweep.result"]
        match = NOT_LEARNING.match(result["reason"])
        assert match, result["reason"]
        assert result["pruned_at_epoch"] == int(match.group(5)) <= 3  # stopped early: 4 epochs were asked for
        run = runs[t.number]
        assert run.info.status == "FINISHED" and run.data.tags["mlp_sweep.reason"] == result["reason"]
        assert run.data.tags["mlp_sweep.state"] == "PRUNED"
        assert run.data.tags["mlp_sweep.pruned_at_epoch"] == str(result["pruned_at_epoch"])
        row = report.loc[t.number]
        assert row["state"] == "PRUNED" and row["reason"] == result["reason"]
        assert row["pruned_at_epoch"] == result["pruned_at_epoch"]
    sigmoid_ce = [
        t
        for t in stopped
        if (t.params["activation"], t.params["cost"], t.params["eta"]) == ("sigmoid", "cross_entropy", 1e12)
    ]
    assert "× the untrained network's" in sigmoid_ce[0].user_attrs["mlp_sweep.result"]["reason"]  # cost ~1e12
    assert all(runs[t.number].info.status == "FINISHED" for t in healthy)
    assert report.loc[[t.number for t in healthy], "reason"].isna().all()


def test_a_failing_trial_becomes_fail_and_the_study_goes_on(workdir, monkeypatch):
    import sweep.run.trial

    real = sweep.run.trial.train_packed

    def flaky(network, configs, *args, **kwargs):  # grid trials differing in eta train as one pack
        if configs[0].batch_size == 20:
            raise RuntimeError("simulated failure")
        return real(network, configs, *args, **kwargs)

    monkeypatch.setattr(sweep.run.trial, "train_packed", flaky)
    assert run_cli("run", write_study(workdir / "tiny.toml"), "--no-report") == 0
    study = journal_study(workdir, "tiny")
    by_state = Counter(t.state for t in study.trials)
    assert by_state == {TrialState.COMPLETE: 4, TrialState.FAIL: 2}
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs["mlp_sweep.result"]["reason"] == "RuntimeError: simulated failure" for t in failed)
    statuses = Counter(r.info.status for r in child_runs(workdir, "tiny"))
    assert statuses == {"FINISHED": 4, "FAILED": 2}


def test_ctrl_c_keeps_finished_trials_fails_the_running_one_and_a_later_run_continues(workdir):
    study_file = write_study(workdir / "tiny.toml", epochs=3, extra=NEVER_PRUNE)
    proc = start_sweep("run", study_file, cwd=workdir, env=held_env(first=2))  # held in its second pack (2, 3)
    wait_until(lambda: proc.poll() is not None or stopped(proc.pid), 120, "the sweep held in its second pack")
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: to the whole process group
    os.killpg(proc.pid, signal.SIGCONT)
    code, out, err = finish(proc, timeout=60)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    study = journal_study(workdir, "tiny")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 2  # the pack that was running
    assert all(t.user_attrs["mlp_sweep.result"]["reason"] == "interrupted" for t in failed)
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert sorted(
        (t.user_attrs["mlp_sweep.retry_of"], t.system_attrs["fixed_params"]["eta"]) for t in waiting
    ) == sorted((t.number, t.params["eta"]) for t in failed)
    killed = [r for r in child_runs(workdir, "tiny") if r.info.status == "KILLED"]
    assert len(killed) == 2
    assert not [r for r in child_runs(workdir, "tiny") if r.info.status == "RUNNING"]
    assert run_cli("run", study_file, "--no-report") == 0  # the later run finishes the grid, each point once
    assert Counter(points(journal_study(workdir, "tiny"))) == Counter(GRID)
    assert Counter(r.info.status for r in child_runs(workdir, "tiny")) == {"FINISHED": 6, "KILLED": 2}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs_a_few_trials(workdir, sampler):
    extra = "[budget]\nn_trials = 3" if sampler not in ("grid", "bruteforce") else ""
    study_file = write_study(workdir / "tiny.toml", sampler=sampler, epochs=1, extra=extra)
    assert run_cli("run", study_file, "--n-trials", 3, "--no-tracking", "--no-report") == 0
    study = journal_study(workdir, "tiny")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert set(points(study)) <= GRID
    if sampler in ("grid", "bruteforce"):
        assert len(set(points(study))) == 3


def test_packed_trials_give_the_same_results_as_trials_trained_alone(workdir):
    study_file = write_study(workdir / "tiny.toml", epochs=3)
    assert run_cli("run", study_file, "--no-tracking", "--no-report") == 0
    alone = workdir / "alone.toml"
    alone.write_text(study_file.read_text().replace('name = "tiny"', 'name = "alone"'))
    assert run_cli("run", alone, "--no-tracking", "--no-report", "--no-pack") == 0
    packed = {(t.params["batch_size"], t.params["eta"]): t for t in journal_study(workdir, "tiny").trials}
    single = {(t.params["batch_size"], t.params["eta"]): t for t in journal_study(workdir, "alone").trials}
    assert packed.keys() == single.keys() == GRID
    for point, t in packed.items():
        a = t.user_attrs["mlp_sweep.result"]["history"]
        b = single[point].user_attrs["mlp_sweep.result"]["history"]
        assert a["validation_accuracy"] == b["validation_accuracy"]
        assert a["training_cost"] == pytest.approx(b["training_cost"], rel=1e-5)
        assert t.value == single[point].value


def packable_study(path, sampler: str, n_trials: int, extra: str = "", epochs: int = 2):
    """TINY with η and λ searched (batch size fixed), ``n_trials`` of them: every trial the
    sampler asks for can pack."""
    study = write_study(path, sampler=sampler, epochs=epochs, extra=f"{extra}\n[budget]\nn_trials = {n_trials}\n")
    text = study.read_text()
    space = (
        '[space]\neta = { type = "float", low = 1e-6, high = 0.5, log = true }\n'
        'lmbda = { type = "float", low = 0.0, high = 5.0 }\n'
    )
    study.write_text(text[: text.index("[space]")].replace("epochs =", "batch_size = 10\nepochs =") + space)
    return study


@pytest.mark.parametrize("workers", [1, 2])
def test_a_tpe_study_of_eta_and_lambda_trains_packs_and_keeps_its_budget(workdir, workers):
    study_file = packable_study(workdir / "tiny.toml", "tpe", 7)
    assert run_cli("run", study_file, "--workers", workers, "--no-report") == 0
    trials = journal_study(workdir, "tiny").trials
    assert len(trials) == 7 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert overlapping(trials) >= 7 - 2 * workers  # claimed together: at most two packs a worker
    assert len({(t.params["eta"], t.params["lmbda"]) for t in trials}) == 7
    assert len(child_runs(workdir, "tiny")) == 7


def test_trials_of_one_sampled_pack_are_pruned_each_on_its_own(workdir):
    extra = '[pruner]\nname = "threshold"\nlower = 0.3\n'  # η near 1e-6 stays at chance after epoch 1
    study_file = packable_study(workdir / "tiny.toml", "random", 8, extra, epochs=3)
    assert run_cli("run", study_file, "--no-tracking", "--no-report") == 0
    trials = journal_study(workdir, "tiny").trials
    assert overlapping(trials) == 7  # one pack
    epochs = {t.state: len(t.user_attrs["mlp_sweep.result"]["history"]["epoch"]) for t in trials}
    assert epochs == {TrialState.PRUNED: 1, TrialState.COMPLETE: 3}
    for t in trials:
        learned = t.user_attrs["mlp_sweep.result"]["history"]["validation_accuracy"][0] >= 0.3
        assert (t.state == TrialState.COMPLETE) == learned


def tracked_stores(workdir) -> Stores:
    return Stores(StorageSpec("mlruns/optuna.journal"), f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")


def test_the_launcher_logs_all_a_worker_sent_before_it_died(workdir):
    """And ends the runs it left open."""
    spec = load_spec(write_study(workdir / "tiny.toml"))
    opened = create_or_resume(spec, tracked_stores(workdir))
    ours, theirs = multiprocessing.Pipe()
    relay = Relay(opened.tracker, [ours])
    relay.start()
    run = RelayedTracker(theirs).start_trial(opened.parent, 0, {"eta": 0.1})
    for epoch in (1, 2):
        run.log_epoch(EpochRecord(epoch, 1.0 / epoch, 0.5, 1.0, 0.5, 0.01, 0.0))
    run.finish("COMPLETE", {"test_accuracy": 0.5})
    run_id = run.run_id
    open_run = RelayedTracker(theirs).start_trial(opened.parent, 1, {"eta": 0.2})  # its run is left open
    theirs.close()  # the worker is gone, what it sent is still in the pipe
    relay.join()
    assert relay.error is None
    runs = {int(r.data.tags["mlp_sweep.trial"]): r for r in child_runs(workdir, "tiny")}
    assert runs[1].info.status == "KILLED" and runs[1].data.tags["mlp_sweep.reason"] == "worker process died"
    assert open_run.id is None
    logged = tracking_client(workdir).get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.data.params == {"eta": "0.1"}
    assert logged.data.metrics[logged_metric("test_accuracy")] == 0.5
    assert len(tracking_client(workdir).get_metric_history(run.run_id, "training_cost")) == 2


def test_runs_a_dead_launcher_left_open_are_ended_from_the_stored_records(workdir):
    """The launcher dies after creating the runs, before it logged anything else its worker sent
    (the worker told every trial): the next start ends each run from what Optuna stored."""
    spec = load_spec(write_study(workdir / "tiny.toml", epochs=3))
    opened = create_or_resume(spec, tracked_stores(workdir))
    ours, theirs = multiprocessing.Pipe()
    relay = Relay(opened.tracker, [ours])

    def dying_launcher():  # answers "start" only
        with contextlib.suppress(EOFError):
            while message := ours.recv():
                if message[0] == "start":
                    relay.handle(ours, message)

    launcher = threading.Thread(target=dying_launcher)
    launcher.start()
    worker = join_study(spec, tracked_stores(workdir), opened.parent, relay=theirs)
    assert Worker(worker, Budget.start(spec, None, None), load_data(spec, None)).run() == 6
    theirs.close()
    launcher.join()
    assert {r.info.status for r in child_runs(workdir, "tiny")} == {"RUNNING"}

    study = create_or_resume(spec, tracked_stores(workdir)).study  # the next start
    statuses = check_agreement(study, child_runs(workdir, "tiny"), 3, tracking_client(workdir))
    assert statuses == {"FINISHED": 6}


def test_workers_started_before_mlflow_stop_and_leave_no_study_when_its_name_is_taken(workdir, capsys):
    """With local workers the launcher sets MLflow up while they train; "tiny" in another storage,
    tracked in the same mlflow.db, is refused then: its workers stop, its new study is deleted."""
    import optuna

    study_file = write_study(workdir / "tiny.toml", epochs=1)
    assert run_cli("run", study_file, "--no-report") == 0
    elsewhere = workdir / "elsewhere.journal"
    capsys.readouterr()
    assert run_cli("run", study_file, "--workers", 2, "--storage", elsewhere) == 2
    assert "belongs to another Optuna study" in capsys.readouterr().err
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(elsewhere)))
    assert optuna.get_all_study_names(storage) == []
    assert len(child_runs(workdir, "tiny")) == 6  # the first study's runs alone


def test_the_ledger_counts_the_budget_as_a_full_read_does_reading_each_trial_once():
    """StudyLedger against ``counted`` over every trial: completes, a failed trial queued again
    (its copy seen before and after it failed), a failure that never started, running and waiting."""
    import optuna
    from optuna.trial import TrialState

    from sweep.run.study import counted
    from sweep.run.worker import StudyLedger
    from sweep.schema import RETRY_OF_ATTR

    study = optuna.create_study()
    ledger = StudyLedger(grids=True)

    def check() -> None:
        running = ledger.read(study)
        trials = study.get_trials(deepcopy=False)
        assert ledger.counted == counted(trials)
        assert ledger.count(TrialState.WAITING) == sum(t.state == TrialState.WAITING for t in trials)
        assert sorted(t.number for t in running) == [t.number for t in trials if t.state == TrialState.RUNNING]

    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.5)  # 0 complete
    first = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # 1 running
    study.ask()  # 2 running, no params
    check()
    study.tell(first, state=TrialState.FAIL)
    check()  # 1 failed, not queued again: counted
    study.enqueue_trial(first.params, user_attrs={RETRY_OF_ATTR: first.number})  # 3 waiting, its copy
    check()  # 1 no longer counted: its copy is
    study.tell(2, state=TrialState.FAIL)
    study.ask()  # 3 running
    check()  # 2 never started: not counted
    assert ledger.retried == {1} and ledger.uncounted == {1, 2} and ledger.counted == 2
