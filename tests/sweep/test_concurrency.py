"""Four local worker processes on the default embedded stores (journal + SQLite) share one grid."""

from __future__ import annotations

import pytest

from tests.sweep.conftest import TINY, child_runs, journal_study, tracking_client
from tests.sweep.pg import by_state, check_agreement, check_grid_done, finish, start_sweep

EPOCHS = 4
SPACE = (
    'batch_size = { type = "int", low = 10, high = 50, step = 10 }\n'
    'eta = { type = "float", low = 0.1, high = 0.4, step = 0.1 }\n'
)  # 5 x 4 = 20 points


@pytest.mark.slow
def test_four_local_workers_share_one_grid_without_losing_anything(workdir):
    head = TINY.split("[space]")[0].format(name="shared", sampler="grid", epochs=EPOCHS, extra="")
    (workdir / "shared.toml").write_text(head + "[space]\n" + SPACE)

    code, out, err = finish(start_sweep("run", "shared.toml", "--workers", 4, "--no-report", cwd=workdir))

    assert code == 0, err
    assert "Traceback" not in err and "locked" not in err + out, err
    study = journal_study(workdir, "shared")
    assert by_state(study) == {"COMPLETE": 20}  # no lost, failed or extra trials
    check_grid_done(study, 20)  # no duplicated grid points
    assert len({t.user_attrs["mlp_sweep.worker"]["pid"] for t in study.trials}) >= 2  # really shared
    runs = child_runs(workdir, "shared")
    # one FINISHED run per trial, each with every epoch of each curve (no lost metrics)
    assert check_agreement(study, runs, EPOCHS, tracking_client(workdir)) == {"FINISHED": 20}
    for run in runs:
        assert {
            f"summary/{name}" for name in ("test_accuracy", "best_validation_accuracy", "gap", "training_seconds")
        } <= set(run.data.metrics)
    assert "Study shared: 20 trials (20 complete, 0 pruned, 0 failed)" in out
