"""The workers' side of a ``sweep proxy`` (sweep.stores.proxy): a storage through it, and the study lock it holds.

Imported only for ``grpc://`` storages (sweep.stores.storage), and needs grpcio then.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sweep.errors import StoreError, UsageError

HOLD = "/mlp_sweep.StudyLock/Hold"
HELD = b"held"
# Pings every 20 s on an idle connection, 10 s to answer: a vanished peer is dropped in half a minute.
KEEPALIVE = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]
CLIENT_OPTIONS = [("grpc.max_receive_message_length", -1), *KEEPALIVE]


def grpc_module():
    """grpcio, or a UsageError saying how to install it."""
    try:
        import grpc
    except ImportError:
        raise UsageError("the gRPC proxy needs grpcio: pip install 'mlp-sweep[proxy]'") from None
    return grpc


_CHANNELS: dict[str, object] = {}


def _channel(spec):
    if spec.url not in _CHANNELS:
        host, port = spec.proxy_address
        _CHANNELS[spec.url] = grpc_module().insecure_channel(f"{host}:{port}", options=CLIENT_OPTIONS)
    return _CHANNELS[spec.url]


def connect(spec, timeout: float):
    """A storage that goes through the proxy at ``spec`` (grpc://HOST:PORT); StoreError if it does not answer."""
    import warnings

    import optuna

    grpc = grpc_module()
    host, port = spec.proxy_address
    try:
        grpc.channel_ready_future(_channel(spec)).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise StoreError(StoreError.STORAGE, None, f"no sweep proxy answers at {spec.url}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.GrpcStorageProxy(host=host, port=port)


@contextlib.contextmanager
def held(spec, study_name: str) -> Iterator[None]:
    """Hold the study's lock in the proxy at ``spec`` for the length of the block."""
    grpc = grpc_module()
    call = _channel(spec).unary_stream(HOLD)(study_name.encode())
    try:
        if next(call) != HELD:
            raise RuntimeError("the proxy answered Hold with something else")
    except grpc.RpcError as exc:
        call.cancel()
        raise StoreError(
            StoreError.STORAGE, None, f"the sweep proxy at {spec.url} did not lock the study: {exc.code().name}"
        ) from None
    try:
        yield
    finally:
        call.cancel()
