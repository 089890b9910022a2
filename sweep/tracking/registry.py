"""A study's best trial and its network: the model ``sweep run`` registers, ``sweep best`` shows.

Weights travel with the runs: a completed trial that is the study's best so far logs them as
WEIGHTS_ARTIFACT of its MLflow run (sweep.run.trial; a local worker's through the launcher's
relay, a ``sweep worker`` elsewhere through its own tracker), so the best trial's weights are
in the tracking store whichever process or machine trained it. At the end of ``sweep run``
the launcher logs them as a pyfunc model (from code: sweep.tracking.served) and registers it
under the study's name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from sweep.errors import OptionError, UsageError
from sweep.schema import (
    BEST_VALIDATION_ACCURACY,
    MODEL_NAME,
    MODEL_WEIGHTS_KEY,
    N_PIXELS,
    RUN_ATTR,
    STUDY_TAG,
    SUMMARY,
    TEST_ACCURACY,
    TRIAL_TAG,
    VALIDATION_ACCURACY,
    TrialRecord,
)
from sweep.spec.study import StudySpec
from sweep.tracking.batches import tag_strings
from sweep.tracking.store import retry
from sweep.tracking.summary import best_trials
from sweep.tracking.tracker import Tracker

#: The stored metrics a best trial is shown and its model version tagged with.
SHOWN_METRICS = (VALIDATION_ACCURACY, BEST_VALIDATION_ACCURACY, TEST_ACCURACY)
SERVED = Path(__file__).with_name("served.py")  # the code of a study's logged model


def best_trial(study: optuna.Study, spec: StudySpec) -> FrozenTrial:
    """The study's best trial (Optuna's); UsageError when it has several objectives or none completed."""
    if spec.is_multi_objective:
        raise UsageError(
            f"study {study.study_name!r} has {len(spec.objectives)} objectives, so no one best trial; "
            f"`sweep report {study.study_name}` lists its Pareto front"
        )
    try:
        return study.best_trial
    except ValueError:
        raise UsageError(f"study {study.study_name!r} has no completed trial yet") from None


def trial_metrics(trial: FrozenTrial) -> dict[str, float]:
    """The trial's stored final metrics (schema.RESULT_ATTR)."""
    return dict(TrialRecord.of(trial).metrics or {})


def register(study: optuna.Study, spec: StudySpec, tracker: Tracker) -> str | None:
    """Register the best trial's network under the study's name; the new version, or None when
    there is no one best trial, its weights were not logged, or it is the latest version already."""
    best = best_trials(study)
    if spec.is_multi_objective or not best:
        return None
    trial = best[0]
    run_id = trial.user_attrs.get(RUN_ATTR)
    if run_id is None:
        return None
    metrics = trial_metrics(trial)
    tags = {
        STUDY_TAG: study.study_name,
        TRIAL_TAG: trial.number,
        **{SUMMARY + name: metrics[name] for name in SHOWN_METRICS if name in metrics},
    }
    return register_run(tracker, run_id, tags)


def register_run(tracker: Tracker, run_id: str, tags: dict) -> str | None:
    """Log the weights of the trial run ``run_id`` as a pyfunc model and register it under the
    study's name; the new version, or None when that run is already the latest version or has
    no weights.

    ``mlflow.pyfunc.log_model`` works on MLflow's global state (tracking URI, experiment,
    active run): these are the client calls it makes, on this study's experiment and run.
    """
    from mlflow.entities import LoggedModelOutput

    client, name = tracker.client, tracker.study_name
    latest = retry(
        client.search_model_versions, f"name = '{name}'", max_results=1, order_by=["version_number DESC"]
    )  # (a study's name has no quotes)
    if latest and latest[0].run_id == run_id:
        return None
    strings = tag_strings(tags)
    with tempfile.TemporaryDirectory() as tmp:
        weights = tracker.download_weights(run_id, tmp)
        if weights is None:
            return None
        local = save_served_model(Path(tmp, MODEL_NAME), weights)
        model = retry(client.create_logged_model, tracker.experiment_id, MODEL_NAME, run_id, strings)
        retry(client.log_model_artifacts, model.model_id, str(local))
    retry(client.finalize_logged_model, model.model_id, "READY")
    if not latest:
        _create_registered_model(tracker)
    retry(client.log_outputs, run_id, [LoggedModelOutput(model.model_id, step=0)])
    # source: the model's artifacts, not "models:/ID" (the registry would look that up in the
    # default tracking store, not this one)
    version = retry(
        client.create_model_version, name, model.artifact_location, run_id, tags=strings, model_id=model.model_id
    )
    return version.version


def save_served_model(local: Path, weights: Path) -> Path:
    """The pyfunc model of ``weights`` saved in the new directory ``local``, from code (served.py,
    with core/ and sweep/ beside it: no pickle); its signature: rows of N_PIXELS numbers in, one
    digit (int64) per row out, as core.data loads them."""
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    with warnings.catch_warnings():  # (the advice to give an input example: the signature says it all)
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(
            local,
            python_model=str(SERVED),
            artifacts={MODEL_WEIGHTS_KEY: str(weights)},
            code_paths=[str(SERVED.parents[2] / "core"), str(SERVED.parents[1])],  # (core/ and sweep/)
            signature=infer_signature(np.zeros((1, N_PIXELS), np.float32), np.zeros(1, np.int64)),
            pip_requirements=[f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}"],
        )
    return local


def _create_registered_model(tracker: Tracker) -> None:
    """The registered model of the study's name (another process may have just made it)."""
    from mlflow.exceptions import MlflowException

    name = tracker.study_name
    try:
        retry(
            tracker.client.create_registered_model,
            name,
            tags={STUDY_TAG: name},
            description=f"The best network of study {name}, chosen by its objective",
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def check_export_path(path: str | os.PathLike) -> Path:
    """``path`` if it may take exported weights: a new file in an existing directory (UsageError if not)."""
    path = Path(path)
    if path.is_dir():
        raise OptionError("export", str(path), "is a directory; give the file to write")
    if path.exists() or path.is_symlink():
        raise OptionError("export", str(path), "already exists; choose another path or remove it")
    if not path.parent.is_dir():
        raise OptionError("export", str(path), f"no directory {path.parent}")
    return path


def export_weights(study: optuna.Study, trial: FrozenTrial, tracker: Tracker | None, path: str | os.PathLike) -> Path:
    """Write the trial's weights (.npz, core.model.save_params) to ``path`` (see check_export_path);
    UsageError when it cannot, or the trial has none."""
    path = check_export_path(path)
    run_id = trial.user_attrs.get(RUN_ATTR)
    if tracker is None or run_id is None:
        raise UsageError(
            f"trial {trial.number} of study {study.study_name!r} has no tracked run, "
            "so no saved weights (was it run untracked?)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        weights = tracker.download_weights(run_id, tmp)
        if weights is None:
            raise UsageError(
                f"trial {trial.number} of study {study.study_name!r} has no saved weights "
                "(its run has none: was it run before weights were kept?)"
            )
        try:
            with open(path, "xb") as out, open(weights, "rb") as src:  # ("x": never over another file)
                shutil.copyfileobj(src, out)
        except OSError as exc:
            raise OptionError("export", str(path), exc.strerror or str(exc)) from None
    return path
