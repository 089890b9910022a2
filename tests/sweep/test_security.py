"""Security: the UI stays on loopback unless exposed, no code is loaded from data, no password leaks."""

from __future__ import annotations

import ast
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from sweep.cli.serve import ui_command
from sweep.errors import UsageError
from tests.conftest import REPO_ROOT
from tests.sweep.conftest import run_cli, write_study
from tests.sweep.pg import (
    database_url,
    finish,
    free_port,
    pg_databases,
    start_sweep,
    stop_group,
    trial_runs,
    wait_for_http,
)

__all__ = ["pg_databases"]  # a fixture, imported for pytest

PASSWORD = "s3cretpw"


# --- the UI -----------------------------------------------------------------------------------


def test_the_ui_command_binds_to_loopback_unless_exposed():
    uri = "postgresql+psycopg2://me:hunter2@db.example/runs"
    argv, env = ui_command(uri)
    assert argv[1:4] == ["-m", "mlflow", "ui"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "5000"
    assert env["MLFLOW_BACKEND_STORE_URI"] == uri
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"  # no job runner: see ui_command
    assert not [a for a in argv if "hunter2" in a]  # the store's URI is not on the command line (ps shows it)
    for host in ("127.0.0.1", "localhost", "::1"):
        assert ui_command(uri, host)[0][argv.index("--host") + 1] == host
    for host in ("0.0.0.0", "192.168.1.7", "::"):
        with pytest.raises(UsageError, match="--expose"):
            ui_command(uri, host)
        assert ui_command(uri, host, expose=True)[0][argv.index("--host") + 1] == host
    exposed, _ = ui_command(uri, expose=True, port=8080)
    assert exposed[exposed.index("--host") + 1] == "0.0.0.0" and exposed[exposed.index("--port") + 1] == "8080"


def _outside_address() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def _group(pgid: int) -> list[int]:
    """The processes (zombies too) of a process group."""
    return [
        int(pid) for pid in subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    ]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sweep_ui_serves_on_loopback_only_and_a_signal_stops_all_it_started(tmp_path, sig):
    """``sweep ui`` listens on 127.0.0.1 alone and puts the store's URI on no command line;
    ``kill PID`` (or Ctrl-C) on ``sweep ui`` alone stops mlflow, uvicorn and all they started."""
    port = free_port()
    db = tmp_path / "store" / "mlflow.db"
    proc = start_sweep("ui", "--port", port, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"})
    try:
        page = wait_for_http(f"http://127.0.0.1:{port}/", proc, timeout=120)
        assert b"<html" in page.lower() and b"mlflow" in page.lower()
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert listening.split() and {line.split()[3] for line in listening.splitlines()} == {f"127.0.0.1:{port}"}
        outside = _outside_address()
        if outside is not None:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((outside, port), timeout=5).close()
        sweep_pid = proc.pid
        children = subprocess.run(["pgrep", "-P", str(sweep_pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 1  # mlflow, in a session and group of its own
        server_group = os.getpgid(int(children[0]))
        assert server_group != os.getpgid(sweep_pid)
        group = _group(server_group)
        assert len(group) >= 2  # mlflow and uvicorn at least
        for pid in [sweep_pid, *group]:  # none shows the store's URI on its command line
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:  # ended meanwhile (ENOENT, or ESRCH while being reaped)
                continue
            assert str(db).encode() not in cmdline
        proc.send_signal(sig)  # to sweep alone, as `kill PID` or a service manager would
        code, out, err = finish(proc, timeout=60)
        assert code == 0, err
        assert _group(server_group) == []  # the group is gone, not a process left (not even a zombie)
        with socket.socket() as s:  # and the port is free again for a server (as uvicorn binds: the
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # closed connection's TIME_WAIT is no owner)
            s.bind(("127.0.0.1", port))
            s.listen()
    finally:
        stop_group(proc)
    assert db.exists()  # the UI really used the store it was given


# --- no code from data ----------------------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__", "read_pickle", "to_pickle"}


def unsafe_code(source: str, name: str = "<source>") -> list[str]:
    """Places where source could run code hidden in data: pickle and friends, eval/exec,
    np.load without allow_pickle=False, yaml.load, anything with allow_pickle=True."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where}: from {node.module} import")
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            keywords = {k.arg: k.value for k in node.keywords}
            if called in UNSAFE_CALLS and (isinstance(func, ast.Name) or called in ("read_pickle", "to_pickle")):
                found.append(f"{where}: {called}()")  # (re.compile and the like are fine)
            module = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            if called == "load" and module in ("np", "numpy"):
                value = keywords.get("allow_pickle", ast.Constant(False))  # numpy's default: checked below
                if not (isinstance(value, ast.Constant) and value.value is False):
                    found.append(f"{where}: np.load with allow_pickle={ast.unparse(value)}")
            if called == "load" and module == "yaml":
                found.append(f"{where}: yaml.load")
            value = keywords.get("allow_pickle")
            if isinstance(value, ast.Constant) and value.value is True:
                found.append(f"{where}: allow_pickle=True")
    return found


def test_the_scanner_finds_what_it_looks_for():
    bad = (
        "import pickle\nfrom marshal import loads\nimport numpy as np\n"
        "eval(x)\nexec(y)\nnp.load(p, allow_pickle=flag)\nnp.load(p, allow_pickle=True)\nf(allow_pickle=True)\n"
        "import yaml\nyaml.load(s)\npd.read_pickle(p)\n"
    )
    assert len(unsafe_code(bad)) == 10  # np.load(allow_pickle=True) counts twice
    fine = "import re\nre.compile('x')\nnp.load(p)\nnp.load(p, allow_pickle=False)\n# pickle, eval(x)\n"
    assert unsafe_code(fine) == []


def test_no_pickle_eval_or_exec_in_core_and_sweep():
    files = sorted([*(REPO_ROOT / "core").rglob("*.py"), *(REPO_ROOT / "sweep").rglob("*.py")])
    assert len(files) >= 15
    found = [hit for path in files for hit in unsafe_code(path.read_text(), str(path.relative_to(REPO_ROOT)))]
    assert found == []
    text = "\n".join(path.read_text() for path in files)
    assert "allow_pickle=True" not in text  # the grep, as well as the parse
    assert "allow_pickle=False" in (REPO_ROOT / "core" / "model.py").read_text()  # weights: explicitly no pickle


class Payload:
    """Unpickling it runs code: it creates the file ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def pickled(marker: Path):
    """An object array: NumPy writes it as a pickle, which would create ``marker`` when loaded."""
    import numpy as np

    array = np.empty(1, dtype=object)
    array[0] = Payload(marker)
    return array


def test_a_saved_network_holding_a_pickle_is_refused_without_running_it(tmp_path):
    import numpy as np

    from core.model import NetworkSpec, init_params, load_params, save_params

    spec = NetworkSpec((4, 3, 2))
    path = tmp_path / "net.npz"
    save_params(path, spec, init_params(spec, np.random.default_rng(0)))
    with np.load(path) as saved:
        arrays = dict(saved)
    marker = tmp_path / "ran"
    np.savez(path, **{**arrays, "W0": pickled(marker)})
    with pytest.raises(ValueError, match="not a saved network"):
        load_params(path)
    assert not marker.exists()


def test_a_cached_dataset_holding_a_pickle_is_built_again_without_running_it(tmp_path, mnist_dir, monkeypatch):
    import numpy as np

    from core.data import cache_dir, load_mnist

    monkeypatch.setenv("MLP_SWEEP_CACHE", str(tmp_path / "cache"))
    good = load_mnist(mnist_dir, n_train=50, n_validation=10, n_test=10)
    [entry] = (cache_dir() / "decoded").iterdir()
    marker = tmp_path / "ran"
    np.save(entry / "test_y.npy", pickled(marker), allow_pickle=True)
    again = load_mnist(mnist_dir, n_train=50, n_validation=10, n_test=10)
    assert not marker.exists()
    np.testing.assert_array_equal(again.test.y, good.test.y)
    assert np.load(entry / "test_y.npy").dtype == good.test.y.dtype  # the entry was built again


# --- passwords ---------------------------------------------------------------------------------------


def _grep_tree(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.postgres
@pytest.mark.slow
def test_database_passwords_never_reach_output_reports_runs_or_the_databases(
    tmp_path, pg_databases, monkeypatch, capfd
):
    optuna_db, mlflow_db = pg_databases(), pg_databases()
    storage = database_url(optuna_db, password=PASSWORD)  # trust auth: any password is accepted
    tracking = database_url(mlflow_db, password=PASSWORD, driver="postgresql+psycopg2")
    stores = ["--storage", storage, "--tracking-uri", tracking]
    write_study(tmp_path / "tiny.toml", epochs=1)
    (tmp_path / "other.toml").write_text((tmp_path / "tiny.toml").read_text().replace("epochs = 1", "epochs = 2"))

    outputs = []
    for args in (
        ["run", "tiny.toml", "--n-trials", 3, "--no-report", *stores],  # real processes: all they
        ["report", "tiny", "--out", "rep", *stores],
        ["worker", "--study", "tiny", *stores],
    ):  # print or log
        returned, out, err = finish(start_sweep(*args, cwd=tmp_path))
        assert returned == 0, (args, err)
        outputs.append(out + err)
    monkeypatch.chdir(tmp_path)
    for args, code in [
        (["list", "--storage", storage], 0),
        (["run", "other.toml", *stores], 2),  # same name, other settings: names the storage
        (["worker", "--study", "nope", *stores], 2),
        (["report", "nope", *stores], 2),
        (["run", "tiny.toml", "--storage", storage.replace("5432", "1"), "--no-tracking"], 2),
        (["run", "tiny.toml", "--storage", storage, "--tracking-uri", tracking.replace("5432", "1")], 2),
    ]:  # in this process, output captured at the file descriptors (logging included)
        assert run_cli(*args) == code, args
        captured = capfd.readouterr()
        outputs.append(captured.out + captured.err)
    everything = "\n".join(outputs)
    assert PASSWORD not in everything
    assert "postgresql://postgres:***@127.0.0.1" in everything  # the URL is shown, redacted

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(trial_runs(tracking, "tiny")) == 6 and len(runs) == 7  # 3 by run, 3 by worker; and the parent
    for run in runs:
        for key, value in {**run.data.params, **run.data.tags}.items():
            assert PASSWORD not in f"{key}={value}", run.info.run_name
    parent = next(r for r in runs if r.data.tags.get("mlp_sweep.role") == "parent")
    assert parent.data.tags["mlp_sweep.storage"] == storage.replace(PASSWORD, "***")

    assert (tmp_path / "rep" / "trials.csv").exists() and (tmp_path / "rep" / "summary.txt").exists()
    assert _grep_tree(tmp_path, PASSWORD.encode()) == []  # reports, artifacts, study files, everything
    for db in (optuna_db, mlflow_db):  # every row of both databases
        dump = subprocess.run(["pg_dump", "--data-only", database_url(db)], capture_output=True, check=True).stdout
        assert len(dump) > 1000 and PASSWORD.encode() not in dump
