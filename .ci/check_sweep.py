"""CI: what ``make sweep`` left in ./mlruns, and what it printed (the file named by argv[1]).

The README's first command on a clean clone: studies/homework-grid-5k.toml's 121 grid points,
each trained once and COMPLETE in the Optuna journal; in MLflow, one parent run for the study
and one child run per trial under it; no warning and no traceback in its output. Prints what
it checked; exits 1 with every problem found.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

from sweep.schema import PARENT_ATTR, PARENT_TAG, ROLE_PARENT, ROLE_TAG, ROLE_TRIAL

STUDY, POINTS = "homework-grid-5k", 121  # 11 batch sizes x 11 learning rates
JOURNAL, TRACKING = Path("mlruns/optuna.journal"), "sqlite:///mlruns/mlflow.db"
NOISE = re.compile(r"warning|traceback", re.IGNORECASE)


def problems(output: str) -> list[str]:
    """What is wrong with the stores and the output; empty when all is as the README says."""
    found = [f"output line {n}: {line}" for n, line in enumerate(output.splitlines(), 1) if NOISE.search(line)]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(JOURNAL)))
    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    points = {tuple(sorted(t.params.items())) for t in complete}
    if len(trials) != POINTS or len(complete) != POINTS or len(points) != POINTS:
        found.append(f"{len(trials)} trials, {len(complete)} complete at {len(points)} grid points, not {POINTS}")
    client = MlflowClient(TRACKING)
    experiment = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == ROLE_PARENT]
    children = [r for r in runs if r.data.tags.get(ROLE_TAG) == ROLE_TRIAL]
    if [r.info.run_id for r in parents] != [study.user_attrs.get(PARENT_ATTR)]:
        found.append(f"{len(parents)} parent runs, not the study's one ({study.user_attrs.get(PARENT_ATTR)})")
    if len(children) != POINTS or {r.data.tags.get(PARENT_TAG) for r in children} != {r.info.run_id for r in parents}:
        found.append(f"{len(children)} trial runs, not {POINTS} under the parent run")
    if len(runs) != len(parents) + len(children):
        found.append(f"{len(runs) - len(parents) - len(children)} runs that are neither parent nor trial")
    print(f"make sweep: {len(complete)} complete trials, {len(parents)} parent run, {len(children)} trial runs")
    return found


if __name__ == "__main__":
    if found := problems(Path(sys.argv[1]).read_text()):
        sys.exit("make sweep did not leave what the README says:\n  " + "\n  ".join(found))
