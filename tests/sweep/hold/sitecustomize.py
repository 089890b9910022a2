"""Holds a worker at a chosen point, for the tests that kill or stop workers mid-trial.

Python imports this module at start-up in every process whose PYTHONPATH holds its
directory (see ``held_env`` and ``held_claim_env`` in tests/sweep/pg.py); it does nothing
unless one of these is set:

- ``MLP_SWEEP_TEST_HOLD=EPOCH:FIRST``: the first time the process reports epoch EPOCH of a
  trial numbered FIRST or more to Optuna (``Trial.report``: the objective reports every epoch
  when the study prunes), it stops itself with SIGSTOP once the report is stored.
- ``MLP_SWEEP_TEST_HOLD_CLAIM=asked`` or ``sampled``: inside its first claim, right after its
  first ``Study.ask`` (the trial RUNNING, its parameters not yet sampled), or right before it
  names itself in a trial (``Trial.set_user_attr`` of the worker attribute: sampled, not named).

The test sees the trial held in the storage for as long as it needs, and kills the worker
(SIGKILL) or signals it and lets it go on (SIGCONT): short trials, no race.
"""

import os

_HOLD = os.environ.get("MLP_SWEEP_TEST_HOLD")
_CLAIM = os.environ.get("MLP_SWEEP_TEST_HOLD_CLAIM")

if _HOLD or _CLAIM:
    import signal

    import optuna

    _held: list[str] = []  # where this process held (once per process)

    def _hold(where: str) -> None:
        if not _held:
            _held.append(where)
            os.kill(os.getpid(), signal.SIGSTOP)


if _HOLD:
    _EPOCH, _FIRST = map(int, _HOLD.split(":"))
    _report = optuna.trial.Trial.report

    def _report_then_hold(self, value, step):
        _report(self, value, step)
        if step == _EPOCH and self.number >= _FIRST:
            _hold("report")

    optuna.trial.Trial.report = _report_then_hold

if _CLAIM == "asked":
    _ask = optuna.Study.ask

    def _ask_then_hold(self, *args, **kwargs):
        trial = _ask(self, *args, **kwargs)
        _hold("asked")
        return trial

    optuna.Study.ask = _ask_then_hold

if _CLAIM == "sampled":
    from sweep.schema import WORKER_ATTR

    _set_user_attr = optuna.trial.Trial.set_user_attr

    def _hold_then_name(self, key, value):
        if key == WORKER_ATTR:
            _hold("sampled")
        _set_user_attr(self, key, value)

    optuna.trial.Trial.set_user_attr = _hold_then_name
