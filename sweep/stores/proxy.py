"""``sweep proxy``, the server: Optuna's gRPC storage proxy over a study database, with the sweep's study lock.

Many workers then share one process's cache of the study and its few database connections,
instead of each opening its own (Optuna recommends it for many processes; experimental since
Optuna 4.2). Workers give ``--storage grpc://HOST:PORT``.

Beside Optuna's storage service the server answers one more method: ``Hold(study name)``, a
stream that the server answers once it holds the study's lock for the caller (a lock in the
server, and the database's advisory lock, so that workers using the database directly are
excluded too) and that keeps it until the call ends. A worker that dies drops its connection,
which ends the call: the lock cannot outlive its holder (keepalive pings find a machine that
vanished without closing it). Dead workers' trials: see ``sweep.run.beats.StampBeats``.
Needs grpcio (``pip install 'mlp-sweep[proxy]'``).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from sweep.errors import OptionError, StoreError
from sweep.stores.client import HELD, HOLD, KEEPALIVE, grpc_module
from sweep.stores.storage import open_storage, study_lock
from sweep.stores.urls import redact

POLL = 0.5  # seconds between a waiting Hold's checks that its caller is still there
DEFAULT_THREADS = 128  # concurrent calls; each worker waiting for the lock takes one
PROXY_POOL = {"pool_size": 8, "max_overflow": 8}  # database connections, whatever the number of workers


class StudyLocks:
    """The server's side of ``Hold``: one lock per study, held for the length of a call."""

    def __init__(self, storage_spec) -> None:
        self.spec = storage_spec
        self.locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self.guard = threading.Lock()

    def hold(self, request: bytes, context) -> Iterator[bytes]:
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
    for a store it cannot serve, OptionError (port) if the port cannot be bound."""
    grpc = grpc_module()
    from sweep.adapters import add_storage_service, cached_storage

    if storage_spec.is_proxy or not storage_spec.is_rdb:
        raise StoreError(
            StoreError.STORAGE,
            redact(storage_spec.url),
            "the proxy serves a database (postgresql://... or sqlite:///FILE), not a journal file or another proxy",
        )
    storage = cached_storage(open_storage(storage_spec, pool=PROXY_POOL))
    server = grpc.server(ThreadPoolExecutor(max_workers=threads), options=KEEPALIVE)
    add_storage_service(storage, server)
    locks = StudyLocks(storage_spec)
    service, method = HOLD.strip("/").split("/")
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(service, {method: grpc.unary_stream_rpc_method_handler(locks.hold)})]
    )  # (bytes in and out: no serialisers)
    try:
        bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise OptionError("port", str(port), f"cannot listen on {host}:{port} (in use, or not an address here)")
    return server
