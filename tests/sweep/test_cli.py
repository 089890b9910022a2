"""The launcher's edge: help everywhere, bad input gives one line and exit 2, nothing stored changes."""

from __future__ import annotations

import pytest

from sweep.cli.commands import cli
from sweep.words import plural
from tests.sweep.bad_studies import BAD_STUDIES, BY_PART, CLI_SAMPLE
from tests.sweep.conftest import (
    copy_stored,
    journal_study,
    one_line_error,
    overlapping,
    run_cli,
    tree_snapshot,
    write_study,
)

COMMANDS = sorted(cli.commands)


def test_the_launcher_has_the_documented_commands():
    assert {"run", "worker", "list", "ui", "report", "refine", "best"} <= set(COMMANDS)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help(command, capsys):
    args = ["--help"] if command is None else [command, "--help"]
    assert run_cli(*args) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: sweep") and "--help" in out
    if command is not None:
        params = [p for p in cli.commands[command].params if p.name != "help"]
        for param in params:  # every option is documented
            if param.param_type_name == "option":
                assert param.help, f"{command} {param.opts} has no help"


@pytest.fixture
def stored(workdir, stored_study):
    """The stored tiny study copied into this test's workdir; returns a snapshot of its stores."""
    copy_stored(stored_study, workdir)
    return tree_snapshot(workdir / "mlruns")


def test_the_launchers_sample_of_bad_studies_covers_every_part():
    """Every row runs through the parser (test_spec.py); the launcher gets at least one of each part."""
    ids = {row[0] for row in CLI_SAMPLE}
    assert all(ids & {row[0] for row in rows} for rows in BY_PART.values())
    assert ids <= {row[0] for row in BAD_STUDIES} and len(ids) == len(CLI_SAMPLE) < len(BAD_STUDIES)
    assert {row[0] for row in BAD_STUDIES if row[2] is None} <= ids  # files refused as a whole


@pytest.mark.parametrize("case_id, text, key, phrase", CLI_SAMPLE, ids=[c[0] for c in CLI_SAMPLE])
def test_bad_study_file_gives_one_line_exit_2_and_touches_nothing(workdir, stored, capsys, case_id, text, key, phrase):
    path = workdir / "bad.toml"
    path.write_text(text)
    capsys.readouterr()
    assert run_cli("run", path) == 2
    line = one_line_error(capsys)
    assert str(path) in line and phrase in line
    if key:
        assert key in line
    assert tree_snapshot(workdir / "mlruns") == stored


@pytest.mark.parametrize(
    "args, phrase",
    [
        (["run", "tiny.toml", "--workers", "0"], "--workers"),
        (["run", "tiny.toml", "--n-trials", "-3"], "--n-trials"),
        (["run", "tiny.toml", "--timeout", "0"], "--timeout"),
        (["run", "tiny.toml", "--storage", "ftp://host/x"], "unknown storage scheme 'ftp'"),
        (["run", "tiny.toml", "--storage", "postgresql://nobody:secret@127.0.0.1:1/none"], "cannot open"),
        (["run", "missing.toml"], "missing.toml"),
        (["run", "tiny.toml", "--data-dir", "no-such-dir"], "no-such-dir"),
        (["run", "tiny.toml", "--bogus"], "--bogus"),
        (["report", "no-such-study"], "no study named 'no-such-study'"),
        (["refine", "no-such-study"], "no study named 'no-such-study'"),
        (["worker", "--study", "no-such-study"], "no study named 'no-such-study'"),
        (["ui", "--host", "0.0.0.0"], "--expose"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_bad_flags_and_names_give_one_line_exit_2_and_touch_nothing(workdir, stored, capsys, args, phrase):
    capsys.readouterr()
    assert run_cli(*args) == 2
    line = one_line_error(capsys)
    assert phrase in line
    assert "secret" not in line
    assert tree_snapshot(workdir / "mlruns") == stored


def test_a_study_name_reused_with_other_settings_is_refused(workdir, stored, capsys):
    changed = (workdir / "tiny.toml").read_text().replace("epochs = 1", "epochs = 2")
    (workdir / "other.toml").write_text(changed)
    capsys.readouterr()
    assert run_cli("run", workdir / "other.toml") == 2
    assert "already exists" in one_line_error(capsys)
    assert tree_snapshot(workdir / "mlruns") == stored


def test_list_shows_counts_and_best(workdir, stored, capsys):
    capsys.readouterr()
    assert run_cli("list") == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("tiny "))
    study = journal_study(workdir, "tiny")
    values = sorted(t.value for t in study.trials)  # both complete, validation accuracy (maximised)
    assert study.direction.name == "MAXIMIZE" and values[0] < values[-1]  # the best is not just any trial
    # trials, complete, pruned, failed, running, best
    assert row.split()[1:] == ["2", "2", "0", "0", "0", f"{values[-1]:.4g}"]


def test_report_and_refine_from_the_launcher(workdir, stored, capsys):
    assert run_cli("report", "tiny", "--out", workdir / "rep") == 0
    assert (workdir / "rep" / "trials.csv").exists() and (workdir / "rep" / "heatmap.png").stat().st_size > 0
    assert run_cli("refine", "tiny") == 0  # ./studies did not exist
    assert (workdir / "studies" / "tiny-refined.toml").exists()
    assert run_cli("refine", "tiny", "--out", workdir / "studies" / "tiny-refined.toml") == 2  # never overwrites


def test_counts_are_pluralised(workdir, capsys):
    """One trial is "1 trial" in the summary, the report's summary and the worker's last line."""
    assert run_cli("run", write_study(workdir / "one.toml", name="one", epochs=1), "--n-trials", 1) == 0
    out = capsys.readouterr().out
    assert "Study one: 1 trial (1 complete" in out and "1 trials" not in out
    assert "1 completed trial by" in out  # the best region's summary
    summary = (workdir / "reports" / "one" / "summary.txt").read_text()
    assert "Study one: 1 trial (" in summary and "1 trials" not in summary
    assert run_cli("run", write_study(workdir / "two.toml", name="two", epochs=1), "--n-trials", 2, "--no-report") == 0
    assert "Study two: 2 trials (2 complete" in capsys.readouterr().out
    assert run_cli("worker", "--study", "two", "--n-trials", 3) == 0
    assert "worker ran 1 trial of two" in capsys.readouterr().out


def test_plural():
    assert [plural(n, "trial") for n in (0, 1, 2)] == ["0 trials", "1 trial", "2 trials"]
    assert plural(1, "process", "processes") == "1 process" and plural(3, "process", "processes") == "3 processes"


def test_run_and_worker_share_the_options_that_run_trials():
    shared = {"--n-trials", "--timeout", "--storage", "--tracking-uri", "--no-tracking", "--no-pack", "--data-dir"}
    for command in (cli.commands["run"], cli.commands["worker"]):
        assert shared <= {opt for param in command.params for opt in param.opts}, command.name


@pytest.mark.parametrize("flags, packed", [((), True), (("--no-pack",), False)], ids=["packed", "no-pack"])
def test_a_worker_with_no_pack_trains_trials_one_by_one(workdir, flags, packed):
    write_study(workdir / "tiny.toml")  # a grid whose points pair up by eta: packs of two by default
    assert run_cli("run", "tiny.toml", "--n-trials", 1, "--no-tracking", "--no-report") == 0
    assert run_cli("worker", "--study", "tiny", "--no-tracking", *flags) == 0
    trials = [t for t in journal_study(workdir, "tiny").trials if t.number > 0]
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" for t in trials)
    assert (overlapping(trials) > 0) == packed
