"""How a study looks in the MLflow UI: its runs' names, metric keys and tag values, the runs-table
view its experiment opens with, and the UI's address of that table or of one run."""

from __future__ import annotations

import json
from collections.abc import Sequence

from core.history import CURVES
from sweep.schema import BEST_TAG, STATE_TAG, SUMMARY, VIEW_KEY
from sweep.words import show_number


def run_label(number: int, searched: dict) -> str:
    """A trial run's name: its number and the values searched (``#0005 batch_size=20 eta=0.3``)."""
    return " ".join([f"#{number:04d}", *(f"{key}={show_number(value)}" for key, value in searched.items())])


def logged_metric(name: str) -> str:
    """The MLflow key of a trial metric: curves as they are, one-value metrics under SUMMARY."""
    return name if name in CURVES else SUMMARY + name


def timing_note(pack: int) -> str:
    """TIMING_TAG's value for a trial trained in a pack of ``pack`` trials (1: alone)."""
    return f"pack of {pack}: seconds are the pack's, shared equally" if pack > 1 else "own"


def runs_view(searched: Sequence[str], objectives: Sequence[str]) -> str:
    """The runs-table view a study's experiment opens with (VIEW_TAG's value): the searched
    parameters, the objectives, the trial state and best-trial tags, the dataset; nested runs shown."""
    columns = (
        [f"params.`{name}`" for name in searched]
        + [f"metrics.`{logged_metric(m)}`" for m in objectives]
        + [f"tags.`{STATE_TAG}`", f"tags.`{BEST_TAG}`", "attributes.`Dataset`"]
    )
    return json.dumps(
        {
            "selectedColumns": columns,
            "columnOrder": columns,
            "runsHiddenMode": "SHOW_ALL",
            "columnWidths": {"attributes.`Run Name`": 300},
            "orderByKey": "attributes.start_time",
            "orderByAsc": True,
        }
    )


def view_path(experiment_id: str, run_id: str = "") -> str:
    """The UI's address (after host:port/) of an experiment's runs table, or of one run, in the
    model-training view (and the table in VIEW_TAG's view)."""
    if run_id:
        return f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
