"""Holds a worker at an epoch boundary, for the tests that kill or stop workers mid-trial.

Python imports this module at start-up in every process whose PYTHONPATH holds its
directory (see ``held_env`` in tests/sweep/pg.py); it does nothing unless
``MLP_SWEEP_TEST_HOLD`` is ``EPOCH:FIRST``. Then, the first time the process reports epoch
EPOCH of a trial numbered FIRST or more to Optuna (``Trial.report``: the objective reports
every epoch when the study prunes), it stops itself with SIGSTOP once the report is stored.
The test sees the trial mid-way in the storage for as long as it needs, and kills the
worker (SIGKILL) or signals it and lets it go on (SIGCONT): short trials, no race.
"""

import os

_HOLD = os.environ.get("MLP_SWEEP_TEST_HOLD")

if _HOLD:
    import signal

    import optuna

    _EPOCH, _FIRST = map(int, _HOLD.split(":"))
    _report = optuna.trial.Trial.report
    _held: list[int] = []  # the trial this process held at (once per process)

    def _report_then_hold(self, value, step):
        _report(self, value, step)
        if step == _EPOCH and self.number >= _FIRST and not _held:
            _held.append(self.number)
            os.kill(os.getpid(), signal.SIGSTOP)

    optuna.trial.Trial.report = _report_then_hold
