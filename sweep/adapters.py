"""The only places where mlp-sweep relies on Optuna's or MLflow's internals, each with why.

Everything else in ``sweep/`` uses their public APIs. These names are not promised to stay
where they are, so ``tests/sweep/test_adapters.py`` checks every one of them against the
installed packages (it fails loudly after an upgrade that moves one), and pyproject.toml
bounds both packages to the major versions tested.

- ``FIXED_PARAMS_ATTR``: Optuna keeps an enqueued trial's parameters in this system
  attribute (``Study.enqueue_trial``; ``Trial`` reads it back). A trial that died while it
  sampled has only some of them in ``params``; no public API gives the rest, and a grid
  point or a retried trial must be queued again whole.
- ``MLFLOW_DB_LOGGER``: the logger MLflow's database module writes its lock-retry
  tracebacks to; ``quiet_mlflow_logs`` filters the ones our own retries recover from.
- ``batch_limits``: MLflow's per-call ``log_batch`` limits, which its client checks but
  does not expose; we split batches by them instead of having a call refused.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

FIXED_PARAMS_ATTR = "fixed_params"
MLFLOW_DB_LOGGER = "mlflow.store.db.utils"
MLFLOW_LIMITS_MODULE = "mlflow.utils.validation"


@dataclass(frozen=True)
class BatchLimits:
    """What one MLflow ``log_batch`` call may carry."""

    metrics: int  # metrics per call
    params: int  # params per call
    tags: int  # tags per call
    entities: int  # metrics, params and tags together
    param_chars: int  # characters of a param value
    tag_chars: int  # characters of a tag value


@functools.cache
def batch_limits() -> BatchLimits:
    """MLflow's log_batch limits, read from the installed MLflow (imported on first use)."""
    import importlib

    v = importlib.import_module(MLFLOW_LIMITS_MODULE)
    return BatchLimits(v.MAX_METRICS_PER_BATCH, v.MAX_PARAMS_TAGS_PER_BATCH, v.MAX_PARAMS_TAGS_PER_BATCH,
                       v.MAX_ENTITIES_PER_BATCH, v.MAX_PARAM_VAL_LENGTH, v.MAX_TAG_VAL_LENGTH)
