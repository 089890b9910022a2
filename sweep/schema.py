"""Every name mlp-sweep stores, defined once: Optuna attributes, MLflow tags, metric names.

A study in any storage and its runs in any tracking store are read back by these names
(``sweep report`` on another machine, a resumed run, the dead-worker reaper), so they are
part of the stored format: renaming one makes older studies unreadable. Below every
module that reads or writes them; stdlib and ``core`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.history import CURVES

_PREFIX = "mlp_sweep."

# Optuna study user attributes
SPEC_ATTR = _PREFIX + "spec"  # the study's settings (``studyfile.spec_to_dict``): resume and `sweep worker` read them
PARENT_ATTR = _PREFIX + "parent_run_id"  # the study's MLflow parent run
STUDY_ID_ATTR = _PREFIX + "study_id"  # a random id given at creation: tells apart studies of one name

# Optuna trial user attributes
WORKER_ATTR = _PREFIX + "worker"  # {"host", "pid", "started"}: who runs the trial
RUN_ATTR = _PREFIX + "run_id"  # the trial's MLflow run
RESULT_ATTR = _PREFIX + "result"  # a TrialRecord's dict: {"metrics", "history", "reason", "pruned_at_epoch"}
BEAT_ATTR = _PREFIX + "beat"  # system attr: time.time() of a running trial's last heartbeat (gRPC proxy)
RETRY_OF_ATTR = _PREFIX + "retry_of"  # on a queued copy: the number of the trial it re-runs
REASON_ATTR = _PREFIX + "reason"  # on a queued copy: why the trial it re-runs ended (also an MLflow tag)

# MLflow run tags (the first two are MLflow's own)
PARENT_TAG, NOTE_TAG = "mlflow.parentRunId", "mlflow.note.content"
ROLE_TAG, STUDY_TAG, TRIAL_TAG = _PREFIX + "role", _PREFIX + "study", _PREFIX + "trial"
STUDY_ID_TAG = _PREFIX + "study_id"  # on a parent run: the random id of the Optuna study it belongs to
REASON_TAG, PRUNED_AT_TAG = REASON_ATTR, _PREFIX + "pruned_at_epoch"  # on a trial's run: why it ended
ROLE_PARENT, ROLE_TRIAL = "parent", "trial"  # values of ROLE_TAG
STATE_TAG = _PREFIX + "state"  # a trial's Optuna state (COMPLETE, PRUNED, FAIL)
BEST_TAG = _PREFIX + "best"  # on the best trial's run: "best", on each of a Pareto front's: "pareto"
TIMING_TAG = _PREFIX + "timing"  # what a trial's seconds measure: its own time or its share of a pack's
STORAGE_TAG = _PREFIX + "storage"  # on a parent run: the Optuna storage (password hidden)
BEST_RUN_TAG, BEST_PARAMS_TAG = _PREFIX + "best_run", _PREFIX + "best_params"  # on a parent run
CONFIG_ARTIFACT = "study.toml"  # the study file, an artifact of the parent run
#: A trial's weights (core.model.save_params), an artifact of its run: logged by each completed
#: trial that is the study's best so far (single objective), the registered model's source.
WEIGHTS_DIR, WEIGHTS_FILE = "weights", "params.npz"
WEIGHTS_ARTIFACT = f"{WEIGHTS_DIR}/{WEIGHTS_FILE}"
MODEL_NAME = "model"  # the MLflow logged model of a study's best trial (registered under the study's name)
MODEL_WEIGHTS_KEY = "weights"  # the weights' key among the logged model's artifacts (sweep.tracking.served)
N_PIXELS = 784  # the logged model's input, in its signature: rows of 28 x 28 pixels, floats in [0, 1]
#: MLflow run status of a trial's run, by Optuna state. A pruned trial ended as the pruner
#: asked: FINISHED, told apart by STATE_TAG (KILLED is kept for interrupted trials, and the
#: UI draws it like a crash).
STATUS_FOR_STATE = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}

# What the MLflow UI reads (names from its JS bundle, mlflow/server/js/build; README, "The UI")
KIND_TAG, ML_KIND = "mlflow.experimentKind", "custom_model_development"  # an experiment's kind: model training
VIEW_TAG = "mlflow.sharedViewState.mlp-sweep"  # an experiment's runs-table view, opened by VIEW_KEY in a link
VIEW_KEY = VIEW_TAG.rsplit(".", 1)[1]
DATA_CONTEXT_TAG, DATA_CONTEXT = "mlflow.data.context", "training"  # a dataset input's context

#: What a trial can be judged on. The per-epoch ones are also reported after every
#: epoch (best_validation_accuracy as the running maximum), so a pruner can use them.
TRAINING_COST, TRAINING_ACCURACY, VALIDATION_COST, VALIDATION_ACCURACY = CURVES  # (core.train's names)
BEST_VALIDATION_ACCURACY = "best_validation_accuracy"  # the highest validation accuracy of any epoch
TEST_ACCURACY = "test_accuracy"  # on the kept weights, read once per trial
TRAINING_SECONDS = "training_seconds"  # the trial's SGD time
GAP = "gap"  # training minus validation accuracy, of the kept epoch
METRICS = (*CURVES, BEST_VALIDATION_ACCURACY, TEST_ACCURACY, TRAINING_SECONDS, GAP)
PER_EPOCH_METRICS = (*CURVES, BEST_VALIDATION_ACCURACY)
EPOCHS_RUN = "epochs_run"  # a final metric besides METRICS: how many epochs the trial trained
EPOCH_SECONDS = "epoch_seconds"  # an MLflow per-epoch metric besides the curves: that epoch's SGD time
EPOCH_ETA = "epoch_eta"  # an MLflow per-epoch metric: the epoch's η, logged at epoch 1 and when it changes
SUMMARY = "summary/"  # one-value metrics of a trial: a chart section of their own, apart from the curves
COUNT = "trials/"  # a parent run's counts: trials/complete, trials/pruned, trials/failed, trials/best
#: The keys of a trial's stored history, one list each (an epoch per item).
HISTORY_KEYS = ("epoch", *CURVES, "seconds")


@dataclass(frozen=True)
class TrialRecord:
    """What a finished (or interrupted) trial stores under RESULT_ATTR.

    ``metrics``: final metrics (METRICS and EPOCHS_RUN, those known); ``history``: HISTORY_KEYS
    to per-epoch lists; ``reason``: why it was pruned or failed; ``pruned_at_epoch``: where.
    """

    history: Mapping[str, list] = field(default_factory=dict)
    metrics: Mapping[str, float] | None = None
    reason: str | None = None
    pruned_at_epoch: int | None = None

    def to_attr(self) -> dict[str, Any]:
        """The stored form: plain JSON, keys left out when unknown."""
        out: dict[str, Any] = {"history": dict(self.history)}
        for key in ("metrics", "reason", "pruned_at_epoch"):
            value = getattr(self, key)
            if value is not None:
                out[key] = dict(value) if key == "metrics" else value
        return out

    @classmethod
    def of(cls, trial) -> TrialRecord:
        """What an Optuna trial stored under RESULT_ATTR (an empty record if nothing yet)."""
        stored = trial.user_attrs.get(RESULT_ATTR, {})
        return cls(
            stored.get("history", {}), stored.get("metrics"), stored.get("reason"), stored.get("pruned_at_epoch")
        )

    def tags(self) -> dict[str, str]:
        """The MLflow tags that say why the trial ended (none for a completed one)."""
        given = {REASON_TAG: self.reason, PRUNED_AT_TAG: self.pruned_at_epoch}
        return {key: str(value) for key, value in given.items() if value is not None}
