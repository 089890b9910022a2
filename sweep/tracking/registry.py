"""A study's best trial and its network: the model ``sweep run`` registers, ``sweep best`` shows.

Weights travel with the runs: a completed trial that is the study's best so far logs them as
WEIGHTS_ARTIFACT of its MLflow run (sweep.run.trial; a local worker's through the launcher's
relay, a ``sweep worker`` elsewhere through its own tracker), so the best trial's weights are
in the tracking store whichever process or machine trained it. At the end of ``sweep run``
the launcher logs them as a pyfunc model and registers it under the study's name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from sweep.errors import OptionError, UsageError
from sweep.schema import (
    BEST_VALIDATION_ACCURACY,
    RUN_ATTR,
    STUDY_TAG,
    SUMMARY,
    TEST_ACCURACY,
    TRIAL_TAG,
    VALIDATION_ACCURACY,
    TrialRecord,
)
from sweep.spec.study import StudySpec
from sweep.tracking.tracker import Tracker

#: The stored metrics a best trial is shown and its model version tagged with.
SHOWN_METRICS = (VALIDATION_ACCURACY, BEST_VALIDATION_ACCURACY, TEST_ACCURACY)


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
    if spec.is_multi_objective or not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return None
    trial = study.best_trial
    run_id = trial.user_attrs.get(RUN_ATTR)
    if run_id is None:
        return None
    metrics = trial_metrics(trial)
    tags = {
        STUDY_TAG: study.study_name,
        TRIAL_TAG: trial.number,
        **{SUMMARY + name: metrics[name] for name in SHOWN_METRICS if name in metrics},
    }
    return tracker.register_best(run_id, tags)


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
