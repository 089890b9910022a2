"""``sweep proxy``: Optuna's gRPC storage proxy over a study database, with the sweep's study lock.

Many workers then share one process's cache of the study and its few database connections,
instead of each opening its own (Optuna recommends it for many processes; experimental since
Optuna 4.2). Workers give ``--storage grpc://HOST:PORT``.

Beside Optuna's storage service the server answers one more method: ``Hold(study name)``, a
stream that the server answers once it holds the study's lock for the caller (a lock in the
server, and the database's advisory lock, so that workers using the database directly are
excluded too) and that keeps it until the call ends. A worker that dies drops its connection,
which ends the call: the lock cannot outlive its holder (keepalive pings find a machine that
vanished without closing it). Dead workers' trials: see ``sweep.runner.StampBeats``.
Needs grpcio (``pip install 'mlp-sweep[proxy]'``).
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

from sweep.errors import StoreError, UsageError
from sweep.urls import redact

HOLD = "/mlp_sweep.StudyLock/Hold"
HELD = b"held"
POLL = 0.5  # seconds between a waiting Hold's checks that its caller is still there
# Pings every 20 s on an idle connection, 10 s to answer: a vanished peer is dropped in half a minute.
KEEPALIVE = [("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_timeout_ms", 10_000),
             ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0),
             ("grpc.http2.min_ping_interval_without_data_ms", 10_000)]
CLIENT_OPTIONS = [("grpc.max_receive_message_length", -1), *KEEPALIVE]
DEFAULT_THREADS = 128  # concurrent calls; each worker waiting for the lock takes one


def _grpc():
    try:
        import grpc
    except ImportError:
        raise UsageError("the gRPC proxy needs grpcio: pip install 'mlp-sweep[proxy]'") from None
    return grpc


class StudyLocks:
    """The server's side of ``Hold``: one lock per study, held for the length of a call."""

    def __init__(self, storage_spec) -> None:
        self.spec = storage_spec
        self.locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self.guard = threading.Lock()

    def hold(self, request: bytes, context) -> Iterator[bytes]:
        from sweep.storage import study_lock

        name = request.decode()
        with self.guard:
            lock = self.locks[name]
        while not lock.acquire(timeout=POLL):
            if not context.is_active():  # gave up waiting, or died
                return
        ended = threading.Event()
        context.add_callback(ended.set)  # (the call ends: the caller is done, or gone)
        try:
            if not context.is_active():
                return
            with study_lock(self.spec, name):  # the database's lock (a PostgreSQL advisory lock, or a file's)
                yield HELD
                ended.wait()
        finally:
            lock.release()


def make_server(storage_spec, host: str, port: int, threads: int = DEFAULT_THREADS):
    """The proxy's gRPC server over the database ``storage_spec``, not yet started; StoreError
    if the port cannot be bound."""
    grpc = _grpc()
    from sweep.adapters import add_storage_service, cached_storage
    from sweep.storage import open_storage

    if storage_spec.is_proxy or not storage_spec.is_rdb:
        raise UsageError(f"--storage {redact(storage_spec.url)}: the proxy serves a database "
                         "(postgresql://... or sqlite:///FILE), not a journal file or another proxy")
    storage = cached_storage(open_storage(storage_spec))
    server = grpc.server(ThreadPoolExecutor(max_workers=threads), options=KEEPALIVE)
    add_storage_service(storage, server)
    locks = StudyLocks(storage_spec)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("mlp_sweep.StudyLock", {
        "Hold": grpc.unary_stream_rpc_method_handler(locks.hold)})])  # (bytes in and out: no serialisers)
    try:
        bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise StoreError(StoreError.STORAGE, None, f"cannot listen on {host}:{port} (in use, or not an address here)")
    return server


_CHANNELS: dict[str, object] = {}


def _channel(spec):
    if spec.url not in _CHANNELS:
        host, port = spec.proxy_address
        _CHANNELS[spec.url] = _grpc().insecure_channel(f"{host}:{port}", options=CLIENT_OPTIONS)
    return _CHANNELS[spec.url]


def connect(spec, timeout: float | None = None):
    """A storage that goes through the proxy at ``spec`` (grpc://HOST:PORT); StoreError if it does not answer."""
    import warnings

    import optuna

    from sweep.storage import CONNECT_TIMEOUT

    grpc = _grpc()
    host, port = spec.proxy_address
    try:
        grpc.channel_ready_future(_channel(spec)).result(timeout=timeout or CONNECT_TIMEOUT)
    except grpc.FutureTimeoutError:
        raise StoreError(StoreError.STORAGE, None, f"no sweep proxy answers at {spec.url}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.GrpcStorageProxy(host=host, port=port)


@contextlib.contextmanager
def held(spec, study_name: str) -> Iterator[None]:
    """Hold the study's lock in the proxy at ``spec`` for the length of the block."""
    grpc = _grpc()
    call = _channel(spec).unary_stream(HOLD)(study_name.encode())
    try:
        if next(call) != HELD:
            raise RuntimeError("the proxy answered Hold with something else")
    except grpc.RpcError as exc:
        call.cancel()
        raise StoreError(StoreError.STORAGE, None, f"the sweep proxy at {spec.url} did not lock the study: "
                                                   f"{exc.code().name}") from None
    try:
        yield
    finally:
        call.cancel()
