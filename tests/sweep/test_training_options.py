"""Nielsen's chapter-3 options in a study: read from [train], searched in [space], trained alone,
judged on the best epoch with early stopping, their η logged."""

import tomllib

import numpy as np
import optuna
import pytest

from core.history import EpochRecord, TrainResult
from core.model import NetworkSpec, init_params
from sweep.run.trial import final_metrics
from sweep.run.worker import pack_size
from sweep.schema import EPOCH_ETA
from sweep.spec.file import parse_spec
from sweep.spec.study import all_params, suggest, trial_config
from sweep.tracking.tracker import Tracker
from tests.sweep.conftest import tracking_client

HEAD = 'name = "options"\n[budget]\nn_trials = 4\n'


def _spec(text):
    return parse_spec(tomllib.loads(HEAD + text), "options.toml")


def test_train_keys_reach_the_train_config_and_the_logged_params():
    spec = _spec(
        "[train]\nbatch_size = 10\neta = 0.1\nmomentum = 0.9\ndropout = 0.5\npatience = 5\n"
        "eta_patience = 3\neta_min_factor = 64\nmax_norm = 3\n"
    )
    _, config = trial_config(spec, {})
    assert (config.momentum, config.dropout, config.patience, config.eta_patience, config.eta_min_factor) == (
        0.9,
        0.5,
        5,
        3,
        64.0,
    )
    logged = all_params(spec, {})
    assert {k: logged[k] for k in ("momentum", "dropout", "patience", "eta_patience", "eta_min_factor")} == {
        "momentum": 0.9,
        "dropout": 0.5,
        "patience": 5,
        "eta_patience": 3,
        "eta_min_factor": 64.0,
    }
    assert config.max_norm == logged["max_norm"] == 3.0
    assert pack_size(spec) == 1


def test_options_off_by_default_are_not_logged_and_plain_studies_still_pack():
    spec = _spec('[train]\nbatch_size = 10\n[space]\neta = { type = "float", low = 0.01, high = 1.0, log = true }\n')
    _, config = trial_config(spec, {"eta": 0.1})
    assert (config.momentum, config.dropout, config.patience, config.eta_patience) == (0.0, 0.0, None, None)
    options = {"momentum", "dropout", "max_norm", "patience", "eta_patience", "eta_min_factor"}
    assert not options & all_params(spec, {"eta": 0.1}).keys() and config.max_norm is None
    assert pack_size(spec) > 1


def test_options_are_searchable_and_searching_them_stops_packing():
    spec = _spec(
        "[train]\nbatch_size = 10\n[space]\n"
        'eta = { type = "float", low = 0.01, high = 1.0, log = true }\n'
        'momentum = { type = "float", low = 0.0, high = 0.95 }\n'
        'dropout = { type = "categorical", choices = [0.0, 0.2, 0.5] }\n'
        'patience = { type = "int", low = 0, high = 10 }\n'
        'max_norm = { type = "float", low = 2.0, high = 4.0 }\n'
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1), direction="maximize")
    params = suggest(spec, study.ask())
    _, config = trial_config(spec, params)
    assert 0 <= config.momentum <= 0.95 and config.dropout in (0.0, 0.2, 0.5) and 0 <= config.patience <= 10
    assert 2.0 <= config.max_norm <= 4.0 and all_params(spec, params)["max_norm"] == config.max_norm
    assert pack_size(spec) == 1
    grid = _spec(
        '[sampler]\nname = "grid"\n[train]\nbatch_size = 10\n[space]\n'
        'eta = { type = "categorical", choices = [0.1, 0.2] }\nmomentum = 0.9\n'
    )
    assert pack_size(grid) == 1  # a fixed option that packs do not train


def _record(epoch, validation_accuracy):
    return EpochRecord(epoch, 0.5 / epoch, 0.9, 0.6, validation_accuracy, 1.0, 0.1, eta=0.1)


def test_with_early_stopping_a_trial_is_judged_on_its_best_epoch():
    params = init_params(NetworkSpec((4, 3)), np.random.default_rng(0))
    history = tuple(_record(e, a) for e, a in enumerate([0.90, 0.95, 0.93, 0.92], 1))
    stopped = final_metrics(TrainResult(params, history, False, best_epoch=2, ended_by="patience"), 0.94, 5.0)
    assert stopped["validation_accuracy"] == stopped["best_validation_accuracy"] == 0.95
    assert stopped["training_cost"] == 0.25 and stopped["epochs_run"] == 4
    plain = final_metrics(TrainResult(params, history, False), 0.94, 5.0)
    assert plain["validation_accuracy"] == 0.92 and plain["best_validation_accuracy"] == 0.95


@pytest.mark.parametrize(
    "etas, logged", [([0.1, 0.1, 0.05, 0.05, 0.025], [(1, 0.1), (3, 0.05), (5, 0.025)]), ([0.2, 0.2], [(1, 0.2)])]
)
def test_the_epochs_eta_is_logged_when_it_changes(workdir, monkeypatch, etas, logged):
    """In a real MLflow store (the SQLite one ``sweep run`` makes), each epoch sent at once."""
    import sweep.tracking.tracker

    monkeypatch.setattr(sweep.tracking.tracker, "FLUSH_EVERY_S", 0.0)
    tracker = Tracker(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}", "options")
    run = tracker.start_trial("parent", 0, {"eta": etas[0]})
    for epoch, eta in enumerate(etas, 1):
        run.log_epoch(EpochRecord(epoch, 1.0, 0.5, 1.0, 0.5, 1.0, 0.1, eta=eta))
    run.finish("COMPLETE")
    history = tracking_client(workdir).get_metric_history(run.run_id, EPOCH_ETA)
    assert sorted((m.step, m.value) for m in history) == logged
