"""mlp-sweep's sweep layer: Optuna studies from TOML files, tracked in MLflow, reported with pandas.

The public front: what a script (and the project's benchmarks and end-to-end tests) imports.
Names load on first use, so ``import sweep`` stays cheap: the command line starts its workers
before it imports MLflow.
"""

from importlib import import_module

_HOMES = {  # name -> the module that defines it
    "StudySpec": "sweep.spec.study",
    "load_spec": "sweep.spec.file",
    "parse_spec": "sweep.spec.file",
    "StorageSpec": "sweep.stores.storage",
    "Tracker": "sweep.tracking.tracker",
    "Stores": "sweep.run.study",
    "create_or_resume": "sweep.run.study",
    "load_stored_study": "sweep.run.study",
    "load_data": "sweep.run.study",
    "run_study": "sweep.run.runner",
    "write_report": "sweep.report.files",
    "refine": "sweep.report.refine",
    "best_trial": "sweep.tracking.registry",
    "trial_config": "sweep.spec.study",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'sweep' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return __all__
