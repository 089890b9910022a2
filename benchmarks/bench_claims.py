"""Claims under load: N worker processes claim and finish trials that do no training.

Each worker is the project's own ``sweep.run.worker.Worker`` (the study lock, reaping, the budget,
asking, sampling, naming itself, heartbeats) with a runner whose trials cost nothing: it
prepares and tells each trial through ``TrialRunner``'s own ``_prepare`` and ``_finish``. So
what is timed is the claim/tell path the workers use, and nothing else. A claim's latency is
``Worker._claim``'s wall time (waiting for the lock included); claims/s is every claim of the
cell over the time from the workers' common start to the last one's end.

Every cell is a grid study of exactly that many points in a fresh PostgreSQL database, all but
its last ``--claims`` (100) stored as finished trials; the workers claim those last ones, so
each latency is a claim's in a study of that size. Then every grid point must be COMPLETE exactly once,
nothing left RUNNING or WAITING
(the script stops with an error otherwise). The most connections to the study's database seen
at once (pg_stat_activity) are printed too. ``proxy`` cells run ``sweep proxy`` (Optuna's gRPC
storage proxy over the same kind of database) and give the workers ``grpc://127.0.0.1:PORT``.
Trials are claimed one at a time (``pack=False``): a claim is a trial.

    python benchmarks/bench_claims.py [--workers 8 32 64] [--trials 100 1000 10000] [--claims 100]
                                      [--via direct proxy] [--pg postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sweep.run.runner import PRELOAD  # noqa: E402  (after the path: the checkout's sweep, not an installed one)

STUDY = """\
name = "claims-{n}"
[data]
dataset = "mnist-5k"
[sampler]
name = "grid"
[train]
sizes = [784, 8, 10]
epochs = 1
eta = 0.1
[space]
hidden = {{ type = "int", low = 1, high = {hidden} }}
batch_size = {{ type = "int", low = 1, high = 10 }}
"""


def study_spec(n_trials: int):
    """A grid of exactly ``n_trials`` points (a multiple of 10): hidden 1..n/10 x batch size 1..10."""
    import tomllib

    from sweep.spec.file import parse_spec

    return parse_spec(tomllib.loads(STUDY.format(n=n_trials, hidden=n_trials // 10)), f"bench {n_trials}")


def _worker(storage: str, n_trials: int, workers: int, index: int, start, out) -> None:
    """One worker process: join the study, wait for the others, run it to its end; send the latencies."""
    from optuna.trial import TrialState

    from sweep.run.runner import configure_libraries
    from sweep.run.study import Budget, Stores, join_study
    from sweep.run.trial import TrialRunner
    from sweep.run.worker import Worker
    from sweep.schema import TrialRecord
    from sweep.stores.storage import StorageSpec

    class ZeroCost(TrialRunner):
        """Trials that train nothing: prepared and told on the runner's own path, value 0."""

        def run(self, claimed):
            for claim in claimed:
                t = self._prepare(claim)
                self._finish(t, TrialState.COMPLETE, TrialRecord(), [0.0] * len(self.spec.objectives))
            return {claim.trial.number: TrialState.COMPLETE for claim in claimed}

    class Timed(Worker):
        latencies: list[float] = []

        def _claim(self):
            began = time.perf_counter()
            claimed = super()._claim()
            if claimed:
                self.latencies.append(time.perf_counter() - began)
            return claimed

    configure_libraries()
    spec = study_spec(n_trials)
    opened = join_study(spec, Stores(StorageSpec(storage), None), None, seed_offset=index)
    worker = Timed(opened, Budget(spec.grid_size, None), None, workers=workers, pack=False)
    worker.runner = ZeroCost(opened.study, spec, None, None, None)
    try:
        opened.study.get_trials(deepcopy=False)  # the first read of the study, before the clock starts
        start.wait()
        worker.run()
        out.send((worker.latencies, time.perf_counter()))
    except Exception as exc:  # (the others are let go: they end with BrokenBarrierError)
        start.abort()
        out.send(("error", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"))
    finally:
        out.close()


def _admin(pg: str, statement: str, args: tuple = ()):
    """Run one statement on the maintenance database; its first row, if it returns rows."""
    import psycopg2

    conn = psycopg2.connect(pg, connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, args)
            return cur.fetchone() if cur.description else None
    finally:
        conn.close()


class Connections(threading.Thread):
    """The most connections to the database seen at once (pg_stat_activity, twice a second)."""

    def __init__(self, pg: str, name: str) -> None:
        super().__init__(daemon=True)
        self.pg, self.name, self.most, self.stop = pg, name, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            count = _admin(self.pg, "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.name,))[0]
            self.most = max(self.most, count)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_proxy(storage: str) -> tuple[subprocess.Popen, str]:
    """``sweep proxy`` over the storage on a free loopback port; its process and grpc:// URL, once it answers."""
    import grpc

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep", "proxy", "--storage", storage, "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.DEVNULL,
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
    return proc, f"grpc://127.0.0.1:{port}"


def check_exactly_once(storage: str, spec) -> None:
    """Every grid point COMPLETE exactly once; nothing RUNNING or WAITING. SystemExit otherwise."""
    import optuna

    from sweep.spec.samplers import grid_key, grid_order
    from sweep.stores.storage import StorageSpec

    url = StorageSpec(storage).sqlalchemy_url
    trials = optuna.load_study(study_name=spec.name, storage=url).get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    done = Counter(grid_key(t.params) for t in trials if t.state.name == "COMPLETE")
    points = {grid_key(p) for p in grid_order(spec.searched)}
    if set(done) != points or set(done.values()) != {1} or states["RUNNING"] or states["WAITING"]:
        repeated = sum(n > 1 for n in done.values())
        raise SystemExit(
            f"{spec.name}: not every grid point exactly once: {len(done)} of {len(points)} done, "
            f"{repeated} repeated, states {dict(states)}"
        )


def cell(ctx, pg: str, via: str, n_trials: int, workers: int, claims: int) -> dict:
    """A study of ``n_trials`` grid points whose last ``claims`` are claimed by ``workers`` processes: the figures."""
    name = f"mlpsweep_bench_{uuid.uuid4().hex[:10]}"
    _admin(pg, f'CREATE DATABASE "{name}"')
    direct = f"{pg.rsplit('/', 1)[0]}/{name}"
    proxy = None
    try:
        spec = study_spec(n_trials)
        maker = ctx.Process(
            target=_create, args=(direct, n_trials, n_trials - claims)
        )  # (no connection of this process's survives)
        maker.start()
        maker.join()
        assert maker.exitcode == 0, "could not create the study"
        storage = direct
        if via == "proxy":
            proxy, storage = _start_proxy(direct)
        start = ctx.Barrier(workers + 1)
        pipes = [ctx.Pipe(duplex=False) for _ in range(workers)]
        procs = [
            ctx.Process(target=_worker, args=(storage, n_trials, workers, i, start, send))
            for i, (_, send) in enumerate(pipes)
        ]
        for p in procs:
            p.start()
        with contextlib.suppress(threading.BrokenBarrierError):  # (a worker failed to start: it says why)
            start.wait()
        began = time.perf_counter()
        connections = Connections(pg, name)
        connections.start()
        results = [recv.recv() for recv, _ in pipes]
        connections.stop.set()
        for p in procs:
            p.join()
        if failed := [r for r in results if isinstance(r[0], str)]:
            raise SystemExit(f"{via}, {n_trials} trials, {workers} workers: a worker failed: {failed[0][1]}")
        wall = max(end for _, end in results) - began
        check_exactly_once(direct, spec)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=30)
        _admin(pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    latencies = sorted(x for lat, _ in results for x in lat)
    return {
        "via": via,
        "trials": n_trials,
        "workers": workers,
        "claims": len(latencies),
        "claims_per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "wall_s": wall,
        "connections": connections.most,
    }


def _create(storage: str, n_trials: int, done: int) -> None:
    """Create the study, with its first ``done`` grid points already COMPLETE as finished trials
    leave them (parameters, value, the worker that ran them).

    Written in bulk through Optuna's own table definitions (its RDB models): ``add_trials``
    takes about 50 ms a trial on this machine, ten minutes for a study of 10 000.
    """
    import datetime
    import json

    import optuna
    import sqlalchemy
    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models

    from sweep.run.runner import configure_libraries
    from sweep.run.study import Stores, create_or_resume
    from sweep.schema import WORKER_ATTR
    from sweep.spec.samplers import grid_order
    from sweep.spec.study import suggest
    from sweep.stores.storage import StorageSpec

    configure_libraries()
    spec = study_spec(n_trials)
    study = create_or_resume(spec, Stores(StorageSpec(storage), None)).study
    if not done:
        return
    probe = optuna.create_study().ask()
    suggest(spec, probe)  # the distributions the workers suggest from
    dists = probe.distributions
    now = datetime.datetime.now()
    engine = sqlalchemy.create_engine(StorageSpec(storage).sqlalchemy_url)
    points = grid_order(spec.searched)[:done]
    with engine.begin() as conn:
        conn.execute(
            sqlalchemy.insert(models.TrialModel.__table__),
            [
                {
                    "number": i,
                    "study_id": study._study_id,
                    "state": optuna.trial.TrialState.COMPLETE,
                    "datetime_start": now,
                    "datetime_complete": now,
                }
                for i in range(done)
            ],
        )
        ids = dict(
            conn.execute(
                sqlalchemy.text("SELECT number, trial_id FROM trials WHERE study_id = :s"), {"s": study._study_id}
            ).all()
        )
        conn.execute(
            sqlalchemy.insert(models.TrialParamModel.__table__),
            [
                {
                    "trial_id": ids[i],
                    "param_name": name,
                    "param_value": dists[name].to_internal_repr(value),
                    "distribution_json": distribution_to_json(dists[name]),
                }
                for i, point in enumerate(points)
                for name, value in point.items()
            ],
        )
        conn.execute(
            sqlalchemy.insert(models.TrialValueModel.__table__),
            [
                {
                    "trial_id": ids[i],
                    "objective": 0,
                    "value": 0.0,
                    "value_type": models.TrialValueModel.TrialValueType.FINITE,
                }
                for i in range(done)
            ],
        )
        worker = json.dumps({"host": "bench", "pid": 0, "started": "0"})
        conn.execute(
            sqlalchemy.insert(models.TrialUserAttributeModel.__table__),
            [{"trial_id": ids[i], "key": WORKER_ATTR, "value_json": worker} for i in range(done)],
        )
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument(
        "--claims",
        type=int,
        default=100,
        help="claims measured per cell: the study's last ones (its other trials are stored finished)",
    )
    parser.add_argument("--via", nargs="+", choices=["direct", "proxy"], default=["direct", "proxy"])
    parser.add_argument(
        "--pg", default=os.environ.get("MLP_SWEEP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    args = parser.parse_args()
    if any(n % 10 or n < args.claims for n in args.trials):
        parser.error("--trials: multiples of 10, at least --claims")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD[:1])
    print(
        f"{'via':6} {'trials':>6} {'workers':>7} {'claims/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'wall s':>7} "
        f"{'db conns':>8}  exactly once"
    )
    for via in args.via:
        for workers in args.workers:
            for n_trials in args.trials:
                r = cell(ctx, args.pg, via, n_trials, workers, args.claims)
                print(
                    f"{r['via']:6} {r['trials']:6} {r['workers']:7} {r['claims_per_s']:9.1f} {r['p50_ms']:8.1f} "
                    f"{r['p99_ms']:8.1f} {r['wall_s']:7.1f} {r['connections']:8}  yes ({r['claims']} claims)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
