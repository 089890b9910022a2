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
  tracebacks to; ``sweep.tracking.store.configure`` filters the ones our own retries recover from.
- ``batch_limits``: MLflow's per-call ``log_batch`` limits, which its client checks but
  does not expose; we split batches by them instead of having a call refused.
- ``cached_storage``: ``optuna.storages.get_storage`` ("only for internal usage"), which wraps
  an RDB storage in Optuna's trial cache: what ``run_grpc_proxy_server``'s documentation says
  to serve (without it every read of a study reads all of its trials from the database).
- ``add_storage_service``: the servicer and registration that ``run_grpc_proxy_server``
  uses; that function builds and runs its own server, to which no other method (the sweep's
  study lock, sweep.stores.proxy) nor keepalive option can be added.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

FIXED_PARAMS_ATTR = "fixed_params"
MLFLOW_DB_LOGGER = "mlflow.store.db.utils"
MLFLOW_LIMITS_MODULE = "mlflow.utils.validation"
GRPC_SERVICER = ("optuna.storages._grpc.servicer", "OptunaStorageProxyService")
GRPC_REGISTER = ("optuna.storages._grpc.auto_generated.api_pb2_grpc", "add_StorageServiceServicer_to_server")


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
    return BatchLimits(
        v.MAX_METRICS_PER_BATCH,
        v.MAX_PARAMS_TAGS_PER_BATCH,
        v.MAX_PARAMS_TAGS_PER_BATCH,
        v.MAX_ENTITIES_PER_BATCH,
        v.MAX_PARAM_VAL_LENGTH,
        v.MAX_TAG_VAL_LENGTH,
    )


def cached_storage(storage):
    """The RDB storage behind Optuna's trial cache, as ``run_grpc_proxy_server`` should serve it."""
    import optuna

    return optuna.storages.get_storage(storage)


def add_storage_service(storage, server) -> None:
    """Serve Optuna's gRPC storage service over ``storage`` on the grpc ``server`` (not yet started)."""
    import importlib

    servicer = getattr(importlib.import_module(GRPC_SERVICER[0]), GRPC_SERVICER[1])
    register = getattr(importlib.import_module(GRPC_REGISTER[0]), GRPC_REGISTER[1])
    register(servicer(storage), server)
