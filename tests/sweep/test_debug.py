"""An unexpected error: exit code 1 and one short line; the traceback only with --debug or $MLP_SWEEP_DEBUG=1."""

import pytest

import sweep.run.runner
from sweep.cli import main


@pytest.fixture
def broken(monkeypatch):
    """Every command fails as a bug would, inside the code it runs."""

    def fail() -> None:
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(sweep.run.runner, "configure_libraries", fail)
    monkeypatch.delenv("MLP_SWEEP_DEBUG", raising=False)


def run(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code, capsys.readouterr().err


def test_an_unexpected_error_is_one_line_and_exit_1(broken, capsys):
    code, err = run(["list"], capsys)
    assert code == 1
    assert err.splitlines() == [
        "sweep: unexpected error: RuntimeError: a bug (--debug or MLP_SWEEP_DEBUG=1 shows where); please report it"
    ]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(broken, capsys, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("MLP_SWEEP_DEBUG", "1")
    code, err = run(["--debug", "list"] if how == "flag" else ["list"], capsys)
    assert code == 1
    assert err.startswith("Traceback (most recent call last):") and 'raise RuntimeError("a bug' in err
    assert err.splitlines()[-1].startswith("sweep: unexpected error: RuntimeError: a bug (the traceback above")


def test_debug_after_the_command_is_not_sweeps_option(capsys):
    code, err = run(["list", "--debug"], capsys)
    assert code == 2 and "no such option" in err.lower() and "Traceback" not in err
