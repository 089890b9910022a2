"""How a study stands, as its MLflow parent run says it when the study stops: trials by state, its
best trials (the one best, or the Pareto front in the order it is shown), the best runs marked."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from sweep.schema import BEST_PARAMS_TAG, BEST_RUN_TAG, COUNT, RUN_ATTR
from sweep.spec.study import StudySpec
from sweep.tracking.views import logged_metric, run_label, view_path

COUNTED = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


def state_counts(trials: Iterable[optuna.trial.FrozenTrial]) -> Counter[str]:
    """How many trials are in each Optuna state, by the state's name (0 for a state none is in)."""
    return Counter(t.state.name for t in trials)


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's best trial, or a multi-objective study's Pareto front best on the first
    objective first (ties by number); none while no trial is complete."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    sign = 1 if study.directions[0] == StudyDirection.MINIMIZE else -1
    return sorted(study.best_trials, key=lambda t: (sign * t.values[0], t.number))


def parent_summary(study: optuna.Study, spec: StudySpec, experiment_id: str) -> dict:
    """``finish_parent``'s metrics, tags and best runs for the study as it stands.

    Metrics: trials by state (COUNT + complete, pruned, failed) and, with one objective, the
    best value under the objective's own key (so the parent's row shows it in the objective's
    column) and the best trial's number (COUNT + best). Tags: the best trial's parameters and
    the address of its run. Best runs: the best trial's, or those of the Pareto front.
    """
    count = state_counts(study.get_trials(deepcopy=False))
    metrics = {f"{COUNT}{name}": count[state.name] for state, name in COUNTED.items()}
    tags, best = {}, {}
    front = best_trials(study)
    if front:
        multi = len(study.directions) > 1
        best = {t.user_attrs[RUN_ATTR]: "pareto" if multi else "best" for t in front if RUN_ATTR in t.user_attrs}
        if multi:
            metrics[f"{COUNT}pareto"] = len(front)
        else:
            top = front[0]
            metrics[logged_metric(spec.objectives[0].metric)] = top.value
            metrics[f"{COUNT}best"] = top.number
            tags[BEST_PARAMS_TAG] = run_label(top.number, top.params)
            if RUN_ATTR in top.user_attrs:
                tags[BEST_RUN_TAG] = view_path(experiment_id, top.user_attrs[RUN_ATTR])
    return {"metrics": metrics, "tags": tags, "best": best}
