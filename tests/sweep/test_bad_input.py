"""Bad input beyond study files (those are in test_cli.py): one line, exit 2, nothing stored changes.

Unreachable databases and tracking servers, damaged store files (journal, SQLite), sound
files of another kind given as a store (never called damaged), studies that do not exist,
missing or damaged MNIST files, report directories that cannot be written (read-only or full
file systems), bad heartbeat settings, and bad flags and arguments (BAD_FLAGS in bad_studies.py:
--export, refine's and report's --out, --heatmap, ``sweep proxy``, grpc:// URLs, control
characters). Every case runs the launcher in this process, checks that it printed exactly one
line naming the problem (no traceback) and exited with 2, and that the stores under ./mlruns
are byte-for-byte as before (size and mtime of every file; for damaged stores, the sha256 of
every file; with the ``identity`` fixture, of every file in the working directory).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep import limits
from sweep.run import trial as objective
from sweep.run.study import Stores, create_or_resume
from sweep.run.worker import pack_size
from sweep.spec.file import load_spec
from sweep.stores.storage import StorageSpec
from tests.conftest import need
from tests.gzip_bomb import gzip_bomb
from tests.sweep.bad_studies import BAD_FLAGS, EXHAUSTING, SEEDS, UNREADABLE, special_file
from tests.sweep.conftest import (
    copy_stored,
    journal_study,
    one_line_error,
    run_cli,
    tracking_client,
    tree_snapshot,
    write_study,
)
from tests.sweep.pg import database_url, free_port, pg_databases

__all__ = ["pg_databases"]  # a fixture, imported for pytest

UNREACHABLE_PG = "postgresql://nobody:secret@127.0.0.1:1/none"
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # characters a terminal acts on rather than shows
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def refused(capsys, *args) -> str:
    """Run ``sweep ARGS``; it must exit 2 with one line on stderr, which is returned."""
    capsys.readouterr()
    assert run_cli(*args) == 2
    return one_line_error(capsys)


@pytest.fixture(scope="module")
def template(tmp_path_factory, stored_study):
    """A workdir with stored studies: "tiny" (2 trials run) and "full" (on MNIST, created, not run)."""
    root = copy_stored(stored_study, tmp_path_factory.mktemp("stored"))
    text = write_study(root / "full.toml", name="full", epochs=1).read_text()
    (root / "full.toml").write_text(text.replace('"mnist-5k"', '"mnist"'))
    stores = Stores(StorageSpec(str(root / "mlruns" / "optuna.journal")), f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    create_or_resume(load_spec(root / "full.toml"), stores)
    return root


@pytest.fixture
def stored(workdir, template):
    """The template copied into this test's workdir; yields, then checks ./mlruns is unchanged."""
    shutil.copytree(template, workdir, dirs_exist_ok=True)
    before = tree_snapshot(workdir / "mlruns")
    assert before
    yield workdir
    assert tree_snapshot(workdir / "mlruns") == before


# --- unreachable databases and servers -----------------------------------------------------


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.mark.parametrize(
    "args",
    [
        ["worker", "--study", "tiny", "--storage", UNREACHABLE_PG],
        ["report", "tiny", "--storage", UNREACHABLE_PG],
        ["refine", "tiny", "--storage", UNREACHABLE_PG],
        ["list", "--storage", UNREACHABLE_PG],
    ],
    ids=["worker", "report", "refine", "list"],
)
def test_an_unreachable_optuna_database(stored, capsys, args):
    line = refused(capsys, *args)
    assert "--storage: cannot open postgresql://nobody:***@127.0.0.1:1/none" in line and "refused" in line
    assert "secret" not in line


@pytest.mark.parametrize("command", ["run", "worker", "report"])
@pytest.mark.parametrize("kind", ["server", "database"])
def test_an_unreachable_tracking_store_stops_before_anything_is_stored(stored, capsys, command, kind):
    uri = closed_port_url() if kind == "server" else "postgresql+psycopg2://nobody:secret@127.0.0.1:1/none"
    args = {
        "run": ["run", "tiny.toml", "--n-trials", 3],
        "worker": ["worker", "--study", "tiny", "--n-trials", 3],
        "report": ["report", "tiny", "--out", stored / "rep"],
    }[command]
    line = refused(capsys, *args, "--tracking-uri", uri)
    assert "--tracking-uri" in line and "cannot reach" in line and "secret" not in line
    assert not (stored / "rep").exists()


# --- studies that do not exist -------------------------------------------------------------


@pytest.mark.parametrize("command", ["worker", "report", "refine"])
@pytest.mark.parametrize("where", ["missing-journal", "missing-sqlite"])
def test_a_storage_file_that_does_not_exist_is_not_created(stored, capsys, command, where):
    path = stored / "elsewhere" / ("optuna.journal" if where == "missing-journal" else "optuna.db")
    storage = str(path) if where == "missing-journal" else f"sqlite:///{path}"
    args = {"worker": ["worker", "--study", "tiny"], "report": ["report", "tiny"], "refine": ["refine", "tiny"]}
    line = refused(capsys, *args[command], "--storage", storage, "--no-tracking")
    assert f"{path} does not exist" in line
    assert not (stored / "elsewhere").exists()


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["worker", "report", "refine"])
def test_a_study_that_does_not_exist_on_postgresql(stored, capsys, pg_databases, command):
    storage = database_url(pg_databases())
    assert run_cli("list", "--storage", storage) == 0  # an empty study database
    args = {"worker": ["worker", "--study", "nope"], "report": ["report", "nope"], "refine": ["refine", "nope"]}
    line = refused(capsys, *args[command], "--storage", storage)
    assert "no study named 'nope'" in line and "(studies there: none)" in line
    capsys.readouterr()
    assert run_cli("list", "--storage", storage) == 0
    assert "no studies yet" in capsys.readouterr().out


# --- missing or damaged data files ---------------------------------------------------------


def damage(directory: Path, mnist_dir: Path, how: str) -> str:
    """Copy the MNIST files into directory, damage one as told; return the phrase the error must hold."""
    directory.mkdir()
    for name in MNIST_FILES:
        shutil.copyfile(mnist_dir / name, directory / name)
    images, labels = directory / MNIST_FILES[0], directory / MNIST_FILES[1]
    if how == "truncated":
        images.write_bytes(images.read_bytes()[:100_000])
        return "truncated gzip data"
    if how == "flipped-bytes":
        data = bytearray(images.read_bytes())
        for i in range(len(data) // 2, len(data) // 2 + 64):
            data[i] ^= 0xFF
        images.write_bytes(bytes(data))
        return "train-images-idx3-ubyte.gz"
    if how == "not-gzip":
        images.write_text("<html>404 Not Found</html>\n")
        return "corrupt gzip data"
    if how == "empty":
        images.write_bytes(b"")
        return "train-images-idx3-ubyte.gz"
    if how == "swapped":  # labels where the images should be: a valid file, of the wrong kind
        shutil.copyfile(labels, images)
        return "wrong magic number"
    if how == "wrong-content":  # well-formed IDX images, but not MNIST's
        raw = bytearray(gzip.decompress((mnist_dir / MNIST_FILES[2]).read_bytes()))
        raw[4:8] = (60000).to_bytes(4, "big")
        images.write_bytes(gzip.compress(bytes(raw[:16]) + bytes(raw[16:]) * 6, compresslevel=1))
        return "SHA-256 mismatch"
    if how == "gzip-bomb":  # the right header, then 4 GiB of zeros
        images.write_bytes(gzip_bomb(struct.pack(">IIII", 2051, 60000, 28, 28)))
        return "more data after the 47040016 bytes the header promises"
    if how == "missing":
        labels.unlink()
        return "train-labels-idx1-ubyte.gz: no such file"
    raise ValueError(how)


DAMAGE = ["truncated", "flipped-bytes", "not-gzip", "empty", "swapped", "wrong-content", "missing", "gzip-bomb"]


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_mnist_files_stop_a_run_before_anything_is_stored(stored, capsys, mnist_dir, how):
    phrase = damage(stored / "data", mnist_dir, how)
    line = refused(capsys, "run", "full.toml", "--data-dir", stored / "data")
    assert phrase in line, line


@pytest.mark.parametrize("how", ["truncated", "missing", "gzip-bomb"])
def test_damaged_mnist_files_stop_a_worker_joining_a_study(stored, capsys, mnist_dir, how):
    phrase = damage(stored / "data", mnist_dir, how)
    line = refused(capsys, "worker", "--study", "full", "--data-dir", stored / "data")
    assert phrase in line


# --- study files that are not study files --------------------------------------------------


@pytest.mark.parametrize(
    "kind, phrase",
    [
        ("fifo", "not a regular file (a FIFO)"),
        ("socket", "not a regular file (a socket)"),
        ("dev-zero", "not a regular file (a character device)"),
        ("directory", "is a directory"),
        *((kind, phrase) for kind, (_, phrase) in UNREADABLE.items()),
    ],
)
def test_a_study_file_that_is_not_one_is_refused_without_reading_it(stored, record_property, kind, phrase):
    """Never blocks (refused within REFUSAL_SECONDS), never reads more than limits.MAX_STUDY_BYTES + 1
    bytes of it (none of a FIFO, a socket or a device): ``sweep run`` in a process of its own
    whose reads of the file are counted (COUNT_READS)."""
    path = special_file(stored, kind)
    done = subprocess.run(
        [sys.executable, "-c", COUNT_READS, str(path), str(stored / "reads.json"), "run", str(path)],
        cwd=stored,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    reads = json.loads((stored / "reads.json").read_text())
    record_property("seconds", reads["seconds"])
    assert not reads["opened"], "the study file was opened by open(), not only read through os.read"
    if kind in ("fifo", "socket", "dev-zero", "directory"):
        assert reads["bytes"] == [], reads
    else:
        expected = limits.MAX_STUDY_BYTES + 1 if kind == "oversized" else path.stat().st_size
        assert sum(reads["bytes"]) == expected, reads
    assert str(path) in line and phrase in line, line
    assert reads["seconds"] < REFUSAL_SECONDS


REFUSAL_SECONDS = 10  # a refusal takes well under a second; one that reads a FIFO or lists a grid never ends
#: ``sweep ARGS`` whose reads of the file PATH are counted: python -c COUNT_READS PATH REPORT ARGS...
#: writes to REPORT (JSON) the bytes each os.read returned from PATH (the one way ``sweep`` reads a
#: study file), whether open() opened it, and the seconds the command took.
COUNT_READS = """\
import builtins, io, json, os, sys, time
path, report, args = sys.argv[1], sys.argv[2], sys.argv[3:]
real_read, real_open, found = os.read, io.open, {"bytes": [], "opened": False}

def counted_read(fd, n):
    data = real_read(fd, n)
    if os.readlink(f"/proc/self/fd/{fd}") == path:
        found["bytes"].append(len(data))
    return data

def watched_open(file, *more, **options):
    if isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)) == path:
        found["opened"] = True
    return real_open(file, *more, **options)

os.read, builtins.open, io.open = counted_read, watched_open, watched_open
from sweep.cli import main
start = time.perf_counter()
try:
    main(args)
finally:
    found["seconds"] = time.perf_counter() - start
    with real_open(report, "w") as fh:
        json.dump(found, fh)
"""


# --- report directories that cannot be written -----------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(options)``: a tiny tmpfs at a new directory (unmounted afterwards): the "mount" need."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True
        )
        need("mount", done.returncode == 0, f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)


def test_a_report_under_a_regular_file(stored, capsys):
    (stored / "plain-file").write_text("not a directory\n")
    line = refused(capsys, "report", "tiny", "--out", stored / "plain-file" / "report")
    assert f"cannot write reports to {stored / 'plain-file' / 'report'}: Not a directory" in line
    line = refused(capsys, "report", "tiny", "--out", stored / "plain-file")
    assert f"--out': Directory '{stored / 'plain-file'}' is a file" in line
    assert (stored / "plain-file").read_text() == "not a directory\n"


def test_a_report_on_a_read_only_file_system(stored, capsys, tmpfs):
    read_only = tmpfs("ro,size=64k")  # read-only even for root
    line = refused(capsys, "report", "tiny", "--out", read_only / "tiny")
    assert f"cannot write reports to {read_only / 'tiny'}: Read-only file system" in line


def test_a_report_on_a_full_disk_leaves_the_previous_report_as_it_was(stored, capsys, tmpfs):
    full = tmpfs("size=64k")  # the report's plots need more than that
    (full / "tiny").mkdir()
    (full / "tiny" / "trials.csv").write_text("the previous report\n")
    line = refused(capsys, "report", "tiny", "--out", full / "tiny")
    assert f"cannot write reports to {full / 'tiny'}: No space left on device" in line
    assert [p.name for p in (full / "tiny").iterdir()] == ["trials.csv"]  # no half-written files left
    assert (full / "tiny" / "trials.csv").read_text() == "the previous report\n"


# --- settings from the environment -------------------------------------------------------------


@pytest.mark.parametrize(
    "env, phrase",
    [
        ({"MLP_SWEEP_HEARTBEAT": "soon"}, "$MLP_SWEEP_HEARTBEAT='soon': must be a whole number of seconds"),
        ({"MLP_SWEEP_HEARTBEAT": "0"}, "$MLP_SWEEP_HEARTBEAT='0'"),
        ({"MLP_SWEEP_HEARTBEAT": "5", "MLP_SWEEP_GRACE": "5"}, "must be longer than the heartbeat interval"),
    ],
)
def test_bad_heartbeat_settings(stored, capsys, monkeypatch, env, phrase):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    storage = f"sqlite:///{stored / 'mlruns' / 'optuna.db'}"
    line = refused(capsys, "run", "tiny.toml", "--storage", storage)
    assert phrase in line
    assert not (stored / "mlruns" / "optuna.db").exists()


# --- limits (sweep/limits.py): refused when validated, before anything is stored ---------------


def journal_hash(workdir: Path) -> str:
    return hashlib.sha256((workdir / "mlruns" / "optuna.journal").read_bytes()).hexdigest()


@pytest.mark.parametrize("case_id, text, key, phrase", EXHAUSTING + SEEDS, ids=[c[0] for c in EXHAUSTING + SEEDS])
def test_a_study_beyond_the_limits_is_refused_at_once(stored, capsys, record_property, case_id, text, key, phrase):
    """Refused from the axes' bounds, not by listing a grid or allocating: the time is recorded
    (``record_property``), and the proof is that no store file was created or changed."""
    (stored / "big.toml").write_text(text)
    before = journal_hash(stored)
    start = time.perf_counter()
    line = refused(capsys, "run", "big.toml", "--workers", 2)
    seconds = time.perf_counter() - start
    record_property("seconds", seconds)
    assert f"{key}: " in line and phrase in line, line
    assert seconds < REFUSAL_SECONDS
    assert journal_hash(stored) == before


@pytest.mark.parametrize(
    "args, phrase",
    [
        (["run", "tiny.toml", "--timeout", "nan"], "'nan' is not a finite number"),
        (["run", "tiny.toml", "--timeout", "inf"], "'inf' is not a finite number"),
        (["run", "tiny.toml", "--timeout", "1e400"], "'1e400' is not a finite number"),
        (["run", "tiny.toml", "--timeout", "-inf"], "--timeout"),
        (["worker", "--study", "tiny", "--timeout", "nan"], "'nan' is not a finite number"),
        (["worker", "--study", "tiny", "--timeout", "infinity"], "'infinity' is not a finite number"),
        (["report", "tiny", "--quantile", "nan"], "'nan' is not a finite number"),
        (["report", "tiny", "--gap-threshold", "nan"], "'nan' is not a finite number"),
        (["report", "tiny", "--gap-threshold", "inf"], "'inf' is not a finite number"),
        (["refine", "tiny", "--quantile", "nan"], "'nan' is not a finite number"),
        (["refine", "tiny", "--quantile", "NaN"], "'NaN' is not a finite number"),
        (["run", "tiny.toml", "--workers", 10**6], "--workers"),
        (["run", "tiny.toml", "--workers", limits.max_workers() + 1], f"1<=x<={limits.max_workers()}"),
        (["refine", "tiny", "--run", "--workers", 10**6], "--workers"),
        (["run", "tiny.toml", "--n-trials", 10**9], "--n-trials"),
        (["worker", "--study", "tiny", "--n-trials", 10**9], "--n-trials"),
    ],
    ids=lambda v: "-".join(map(str, v)) if isinstance(v, list) else None,
)
def test_flags_beyond_the_limits_are_refused(stored, capsys, args, phrase):
    before = journal_hash(stored)
    line = refused(capsys, *args)
    assert phrase in line, line
    assert journal_hash(stored) == before
    assert not (stored / "reports").exists() and not (stored / "studies").exists()


def test_workers_that_together_do_not_fit_in_memory_are_refused(stored, capsys, monkeypatch):
    """One worker fits (the machine is made exactly as large as it needs), two do not."""
    spec = load_spec(stored / "tiny.toml")
    sizes, batch_size = spec.largest_network()
    need = limits.training_bytes(sizes, batch_size, pack_size(spec), workers=1)
    monkeypatch.setattr(limits, "machine_memory", lambda: need)
    spec.check_memory(pack_size(spec), workers=1)
    before = journal_hash(stored)
    line = refused(capsys, "run", "tiny.toml", "--workers", 2)
    assert f"{pack_size(spec)} at once in each of 2 workers" in line and "needs about" in line, line
    assert journal_hash(stored) == before


def test_a_seed_at_the_top_of_its_range_runs_with_two_workers(workdir, capsys):
    """Worker 1 seeds its sampler with (2**32 - 1 + 1) mod 2**32, which NumPy accepts."""
    write_study(
        workdir / "seeded.toml",
        name="seeded",
        sampler="random",
        epochs=1,
        extra=f"seed = {2**32 - 1}\n\n[budget]\nn_trials = 2",
    )
    assert run_cli("run", "seeded.toml", "--workers", 2, "--no-tracking", "--no-report") == 0
    trials = journal_study(workdir, "seeded").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]


@pytest.mark.parametrize(
    "space, n_trials",
    [("", 1), ('hidden = { type = "int", low = 4, high = 8 }', 50)],
    ids=["no-searched-parameter", "searched"],
)
def test_a_worker_stops_after_a_run_of_failed_trials(workdir, capsys, monkeypatch, space, n_trials):
    """Trials that all fail stop the run after MAX_FAILED_IN_A_ROW of them, with one line (exit 1);
    a trial without parameters is not counted against the budget, so the first case never ended."""

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 7.45 TiB for an array")

    monkeypatch.setattr(objective, "train", out_of_memory)
    (workdir / "failing.toml").write_text(
        f'name = "failing"\n[data]\nn_train = 100\nn_validation = 50\nn_test = 50\n[budget]\nn_trials = {n_trials}\n'
        f"[train]\nsizes = [784, 8, 10]\nepochs = 1\nbatch_size = 10\neta = 0.1\n[space]\n{space}\n"
    )
    capsys.readouterr()
    assert run_cli("run", "failing.toml", "--no-tracking", "--no-report") == 1
    line = one_line_error(capsys)
    assert f"its last {limits.MAX_FAILED_IN_A_ROW} trials failed" in line and "MemoryError: Unable" in line, line
    trials = journal_study(workdir, "failing").get_trials()
    assert [t.state.name for t in trials] == ["FAIL"] * limits.MAX_FAILED_IN_A_ROW


# --- damaged store files (sweep/stores/integrity.py): refused before anything is written ---


def file_hashes(workdir: Path) -> dict[str, str]:
    """sha256 of every file under ./mlruns (less SQLite's ``-shm`` index, see tree_snapshot)."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((workdir / "mlruns").rglob("*"))
        if p.is_file() and not p.name.endswith("-shm")
    }


def damage_store(workdir: Path, template: Path, how: str) -> Path:
    """The template copied into workdir with one store file damaged; returns that file."""
    shutil.copytree(template, workdir, dirs_exist_ok=True)
    journal, db = workdir / "mlruns" / "optuna.journal", workdir / "mlruns" / "mlflow.db"
    lines = journal.read_bytes().splitlines(keepends=True)
    if how == "torn-journal":  # a writer killed in the middle of its line
        journal.write_bytes(b"".join(lines) + lines[-1][: len(lines[-1]) // 2])
    elif how == "garbage-in-journal":
        journal.write_bytes(b"".join(lines[:3] + [b"\x00\x17 not json\n"] + lines[3:]))
    elif how == "truncated-mlflow-db":
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])
    elif how == "garbled-mlflow-db":  # SQLite's header and first page kept, the pages after it garbage
        data = db.read_bytes()
        db.write_bytes(data[:4096] + hashlib.sha256(b"seed").digest() * ((len(data) - 4096) // 32))
    elif how == "random-mlflow-db":  # not even SQLite's header: nothing tells it was a database
        db.write_bytes(hashlib.sha256(b"seed").digest() * 1024)
    return journal if how.endswith("journal") else db


WRITERS = {"run": ["run", "tiny.toml", "--n-trials", 3], "worker": ["worker", "--study", "tiny", "--n-trials", 3]}


@pytest.mark.parametrize("command", WRITERS)
@pytest.mark.parametrize(
    "how", ["torn-journal", "garbage-in-journal", "truncated-mlflow-db", "garbled-mlflow-db", "random-mlflow-db"]
)
def test_a_damaged_store_is_refused_before_anything_is_written(workdir, template, capsys, command, how):
    path = damage_store(workdir, template, how)
    before = file_hashes(workdir)
    line = refused(capsys, *WRITERS[command])
    if how == "random-mlflow-db":  # said to be what it is, not taken for a database (nor "restored")
        assert f"--tracking-uri: {path} is binary data, not an SQLite database holding an MLflow" in line, line
        assert_not_called_damaged(line, workdir)
    else:
        assert f"{path} is damaged" in line and "nothing was written" in line
    if how == "torn-journal":
        count = len(path.read_bytes().splitlines())
        assert f"line {count} of {count} is cut short" in line and "remove its last 1 line;" in line
    elif how == "garbage-in-journal":
        assert "line 4 of" in line and "not a JSON object" in line and "Optuna cannot read past it" in line
    else:
        assert "SQLite" in line
    assert file_hashes(workdir) == before  # nothing appended, no run KILLED, no trial RUNNING


def test_a_torn_journal_is_still_listed_and_reported(workdir, template, capsys):
    damage_store(workdir, template, "torn-journal")
    before = file_hashes(workdir)
    capsys.readouterr()
    assert run_cli("list") == 0
    listed = capsys.readouterr().out
    assert "tiny" in listed and "full" in listed
    assert run_cli("report", "tiny", "--no-tracking", "--out", workdir / "rep") == 0
    assert (workdir / "rep" / "summary.txt").exists()
    assert file_hashes(workdir) == before


def test_a_journal_optuna_cannot_read_is_not_listed(workdir, template, capsys):
    path = damage_store(workdir, template, "garbage-in-journal")
    before = file_hashes(workdir)
    line = refused(capsys, "list")
    assert f"{path} is damaged: line 4 of" in line and "Optuna cannot read past it" in line
    assert file_hashes(workdir) == before


def test_an_empty_journal_is_not_damaged(workdir, capsys):
    journal = workdir / "mlruns" / "optuna.journal"
    journal.parent.mkdir(exist_ok=True)  # (workdir holds an empty tracking database there)
    journal.touch()
    capsys.readouterr()
    assert run_cli("list") == 0
    assert "no studies yet" in capsys.readouterr().out
    line = refused(capsys, "worker", "--study", "tiny", "--no-tracking")
    assert "no study named 'tiny'" in line and "damaged" not in line
    assert journal.stat().st_size == 0


def test_a_truncated_optuna_sqlite_database_is_refused(workdir, capsys):
    db = workdir / "optuna.db"
    storage = f"sqlite:///{db}"
    create_or_resume(load_spec(write_study(workdir / "tiny.toml")), Stores(StorageSpec(storage), None))
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])
    data = db.read_bytes()
    for args in (["worker", "--study", "tiny"], ["list"], ["run", "tiny.toml"]):
        line = refused(capsys, *args, "--storage", storage, *(["--no-tracking"] if args[0] != "list" else []))
        assert f"{db} is damaged" in line and "SQLite" in line
    assert db.read_bytes() == data


# --- store identity: a path or URL names a store of a known kind, or it is refused ----------


def store_contents(workdir: Path) -> dict:
    """Every file under the working directory by SHA-256 (less ``-shm``, see stored_files), and
    the SQL dump of every SQLite database there: to prove nothing was created or changed."""
    import sqlite3

    files = {
        str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(workdir.rglob("*"))
        if p.is_file() and not p.name.endswith("-shm")
    }
    dirs = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_dir())
    dumps = {}
    for db in sorted(workdir.rglob("*.db")):
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro&immutable=1", uri=True)) as conn:
            dumps[str(db.relative_to(workdir))] = list(conn.iterdump())
    return {"files": files, "dirs": dirs, "dumps": dumps}


@pytest.fixture
def identity(stored):
    """The stored workdir plus an Optuna SQLite storage (optuna.db, study "tiny-db"), a database
    of neither kind (other.db), a text file, random bytes and a FIFO; yields, then checks that no
    file under it was created or changed."""
    import sqlite3

    import optuna

    optuna.create_study(study_name="tiny-db", storage=f"sqlite:///{stored / 'optuna.db'}")
    with contextlib.closing(sqlite3.connect(stored / "other.db")) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
        conn.commit()
    (stored / "notes.txt").write_text("not a store\n")
    (stored / "random.bin").write_bytes(hashlib.sha256(b"seed").digest() * 64)
    os.mkfifo(stored / "fifo")  # nobody writes to it: opening it to read would wait for ever
    before = store_contents(stored)
    assert before["dumps"]["mlruns/mlflow.db"] and before["dumps"]["optuna.db"]
    yield stored
    assert store_contents(stored) == before


@pytest.mark.parametrize(
    "command",
    [["run", "tiny.toml"], ["worker", "--study", "tiny"], ["report", "tiny"], ["list"]],
    ids=["run", "worker", "report", "list"],
)
def test_a_journal_in_a_directory_that_does_not_exist_is_refused(identity, capsys, command):
    path = identity / "nowhere" / "optuna.journal"
    line = refused(capsys, *command, "--storage", path)
    assert f"{path.parent}" in line and "does not exist" in line
    assert not (identity / "nowhere").exists()


@pytest.mark.parametrize(
    "command",
    [["run", "tiny.toml", "--no-tracking"], ["worker", "--study", "tiny"], ["report", "tiny"], ["list"]],
    ids=["run", "worker", "report", "list"],
)
@pytest.mark.parametrize(
    "db, phrase",
    [
        ("mlruns/mlflow.db", "is an MLflow tracking store, not an Optuna storage"),
        ("other.db", "is a database of something else, not an Optuna storage"),
    ],
    ids=["mlflow-db", "other-db"],
)
def test_a_database_that_is_not_an_optuna_storage_is_refused(identity, capsys, command, db, phrase):
    line = refused(capsys, *command, "--storage", f"sqlite:///{db}")
    assert phrase in line and db in line


@pytest.mark.parametrize(
    "db, phrase",
    [
        ("optuna.db", "is an Optuna storage, not an MLflow tracking store"),
        ("other.db", "is a database of something else, not an MLflow"),
    ],
    ids=["optuna-db", "other-db"],
)
@pytest.mark.parametrize("command", [["run", "tiny.toml"], ["report", "tiny"], ["ui"]], ids=["run", "report", "ui"])
def test_a_database_that_is_not_an_mlflow_store_is_refused_as_tracking_uri(identity, capsys, command, db, phrase):
    line = refused(capsys, *command, "--tracking-uri", f"sqlite:///{db}")
    assert phrase in line and db in line


def assert_not_called_damaged(line: str, root: Path) -> None:
    """A sound file of another kind: no word of damage, nor advice to mend, restore or remove it."""
    assert not re.search(r"\b(damaged|mend|restore|remove)\b", line.replace(str(root), "")), line


WRONG_KIND = {  # (flag, what it is given, what the error says of it)
    "mlflow-db-as-journal": (
        "--storage",
        "mlruns/mlflow.db",
        "mlruns/mlflow.db is an SQLite database holding an MLflow tracking store, not an Optuna journal",
    ),
    "optuna-db-as-journal": (
        "--storage",
        "optuna.db",
        "optuna.db is an SQLite database holding an Optuna storage, not an Optuna journal "
        "(give it as sqlite:///optuna.db)",
    ),
    "other-db-as-journal": ("--storage", "other.db", "other.db is an SQLite database of something else, not an Optuna"),
    "study-file-as-journal": ("--storage", "tiny.toml", "tiny.toml is a TOML file, not an Optuna journal"),
    "random-bytes-as-journal": ("--storage", "random.bin", "random.bin is binary data, not an Optuna journal"),
    "fifo-as-journal": ("--storage", "fifo", "fifo is not a regular file (a FIFO), not a store file"),
    "dev-null-as-journal": ("--storage", "/dev/null", "/dev/null is not a regular file (a character device)"),
    "directory-as-journal": ("--storage", "mlruns", "mlruns is not a regular file (a directory)"),
    "study-file-as-sqlite": (
        "--storage",
        "sqlite:///tiny.toml",
        "tiny.toml is a TOML file, not an SQLite database holding an Optuna storage",
    ),
    "journal-as-sqlite": (
        "--storage",
        "sqlite:///mlruns/optuna.journal",
        "mlruns/optuna.journal is an Optuna journal, not an SQLite database holding an Optuna storage",
    ),
    "study-file-as-tracking": (
        "--tracking-uri",
        "sqlite:///tiny.toml",
        "tiny.toml is a TOML file, not an SQLite database holding an MLflow tracking store",
    ),
    "text-as-tracking": ("--tracking-uri", "sqlite:///notes.txt", "notes.txt is a text file, not an SQLite database"),
    "journal-as-tracking": (
        "--tracking-uri",
        "sqlite:///mlruns/optuna.journal",
        "mlruns/optuna.journal is an Optuna journal, not an SQLite database holding an MLflow tracking store",
    ),
    "random-bytes-as-tracking": ("--tracking-uri", "sqlite:///random.bin", "random.bin is binary data, not an SQLite"),
    "fifo-as-tracking": ("--tracking-uri", "sqlite:///fifo", "fifo is not a regular file (a FIFO), not a store file"),
}
USING = {  # commands that open each store
    "--storage": [["run", "tiny.toml"], ["worker", "--study", "tiny"], ["list"]],
    "--tracking-uri": [["run", "tiny.toml"], ["report", "tiny"], ["ui"]],
}


@pytest.mark.parametrize(
    "case, command",
    [(case, command) for case, (flag, _, _) in WRONG_KIND.items() for command in USING[flag]],
    ids=[f"{case}-{command[0]}" for case, (flag, _, _) in WRONG_KIND.items() for command in USING[flag]],
)
def test_a_sound_file_of_another_kind_is_refused_as_what_it_is(identity, capsys, case, command):
    """Never called damaged, nor advised to be mended or restored: following that advice would
    destroy a sound file (MLflow's database given as the journal, a study file as a database)."""
    flag, given, phrase = WRONG_KIND[case]
    line = refused(capsys, *command, flag, given)
    assert line.startswith(f"sweep: error: {flag}: ") and phrase in line, line
    assert_not_called_damaged(line, identity)


@pytest.fixture
def busy_port():
    """A loopback port something listens on (for as long as the test runs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_a_bad_flag_or_argument_is_refused_with_one_line(identity, capsys, busy_port, monkeypatch, case):
    """The real ``sweep``: exit 2, one line naming the problem, no control character written to the
    terminal, no file created or changed (the identity fixture compares them all, byte for byte)."""
    monkeypatch.setattr("sweep.stores.storage.CONNECT_TIMEOUT", 1)  # a proxy nobody runs: waited for 1 s, not 10
    args, phrase = BAD_FLAGS[case]
    port = free_port()  # nothing listens there
    line = refused(capsys, *(arg.format(port=port, busy=busy_port) for arg in args))
    assert phrase.format(port=port, busy=busy_port) in line, line
    assert not CONTROL.search(line), line


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
@pytest.mark.parametrize("flag", ["--storage", "--tracking-uri"])
def test_an_in_memory_database_is_refused(identity, capsys, url, flag):
    line = refused(capsys, "run", "tiny.toml", flag, url)
    assert f"{flag} {url}" in line and "in-memory" in line


@pytest.mark.parametrize(
    "uri, phrase",
    [
        ("ftp://host/store", "unknown scheme 'ftp'"),
        ("notes.txt", "is a file, not a store directory"),
        ("file://{root}/notes.txt", "is a file, not a store directory"),
    ],
    ids=["unknown-scheme", "plain-file", "file-uri-to-a-file"],
)
@pytest.mark.parametrize(
    "command", [["run", "tiny.toml"], ["worker", "--study", "tiny"], ["ui"]], ids=["run", "worker", "ui"]
)
def test_a_tracking_uri_of_no_known_kind_is_refused(identity, capsys, command, uri, phrase):
    line = refused(capsys, *command, "--tracking-uri", uri.format(root=identity))
    assert "--tracking-uri" in line and phrase in line


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_a_study_of_the_same_name_in_another_storage_does_not_take_over_its_mlflow_run(identity, capsys, storage):
    """ "tiny" in another (new) storage, tracked in the same mlflow.db: its parent run is the first
    study's, tagged with that study's id, so the run is refused, and the new storage not made."""
    (identity / "elsewhere").mkdir()
    path = identity / "elsewhere" / ("optuna.journal" if storage == "journal" else "optuna.db")
    line = refused(capsys, "run", "tiny.toml", "--storage", path if storage == "journal" else f"sqlite:///{path}")
    assert "belongs to another Optuna study" in line and "'tiny'" in line
    assert not list((identity / "elsewhere").iterdir())
    (identity / "elsewhere").rmdir()


def test_a_study_resumed_from_its_own_storage_keeps_its_mlflow_run(workdir, template):
    """The other side of the identity check: the same study, resumed, logs under its run again."""
    shutil.copytree(template, workdir, dirs_exist_ok=True)
    assert run_cli("run", "tiny.toml", "--n-trials", 3, "--no-report") == 0
    client = tracking_client(workdir)
    experiment = client.get_experiment_by_name("tiny")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`mlp_sweep.role` = 'parent'")
    study = journal_study(workdir, "tiny")
    assert len(parents) == 1 and parents[0].data.tags["mlp_sweep.study_id"] == study.user_attrs["mlp_sweep.study_id"]
    children = client.search_runs([experiment.experiment_id], filter_string="tags.`mlp_sweep.role` = 'trial'")
    assert len(children) == len(study.trials) == 3
