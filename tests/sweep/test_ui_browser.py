"""The MLflow UI over a small study, looked at in headless Chromium as a user would.

Debian's Chromium (/usr/bin/chromium) driven by Playwright; no browser is downloaded. The
test skips, saying why, where either is missing (or fails, when the run requires "chromium":
see tests/conftest.py). Screenshots go to $MLP_SWEEP_SCREENSHOTS if set, else to the test's
temp directory.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

from tests.conftest import need
from tests.sweep.conftest import run_cli
from tests.sweep.pg import free_port, start_sweep, stop_group, wait_for_http

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
STUDY = """\
name = "ui-grid"
description = "batch size by learning rate, 3 x 3"

[data]
dataset = "mnist-5k"
n_train = 500
n_validation = 200
n_test = 200

[sampler]
name = "grid"

[pruner]
name = "median"

[train]
sizes = [784, 16, 10]
epochs = 4

[space]
batch_size = { type = "int", low = 10, high = 30, step = 10 }
eta = { type = "float", low = 0.1, high = 0.3, step = 0.1 }
"""
CURVES = ("training_cost", "training_accuracy", "validation_cost", "validation_accuracy")
WAIT_MS = 30_000  # for anything the UI loads


@pytest.fixture
def chromium():
    """A headless Chromium browser (Debian's): the "chromium" need, with what is missing."""
    need("chromium", CHROMIUM.is_file(), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    installed = importlib.util.find_spec("playwright") is not None
    need("chromium", installed, "Playwright is not installed (pip install '.[test]')")
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        browser, failure = None, ""
        try:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        except sync_api.Error as exc:
            failure = str(exc).splitlines()[0]
        need("chromium", browser is not None, f"Chromium at {CHROMIUM} does not start: {failure}")
        yield browser
        browser.close()


@pytest.fixture
def screenshots(tmp_path) -> Path:
    where = Path(os.environ.get("MLP_SWEEP_SCREENSHOTS") or tmp_path / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


def test_a_new_user_browses_the_study_in_the_mlflow_ui(workdir, chromium, screenshots):
    (workdir / "ui-grid.toml").write_text(STUDY)
    assert run_cli("run", "ui-grid.toml") == 0  # with its report, logged to the parent run
    port = free_port()
    proc = start_sweep("ui", "--port", port, cwd=workdir, env={"PYTHONUNBUFFERED": "1"})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(base + "/", proc, timeout=120)
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        assert lines[0] == f"MLflow UI on {base} (Ctrl-C to stop)"
        link = re.fullmatch(rf"ui-grid: ({re.escape(base)}/#/experiments/\d+/runs\?\S+)", lines[1]).group(1)
        page = chromium.new_page(viewport={"width": 1700, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        # MLflow's assistant panel may open by itself, at any time, over a third of the page: closed
        # whenever it shows, before each action and assertion
        page.add_locator_handler(
            page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]'), lambda close: close.click()
        )
        _browse(page, base, link, screenshots)
    finally:
        stop_group(proc)


def _browse(page, base: str, link: str, shots: Path) -> None:
    from playwright.sync_api import expect

    # The link `sweep ui` printed, in a browser new to MLflow: the runs table, in the model-training
    # view (its side bar has no Sessions, Judges or Prompts), in the study's view.
    page.goto(link)
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    expect(page.get_by_text("batch size by learning rate, 3 x 3").first).to_be_visible()
    _model_training_side_bar(page)
    names = _column(page, "attributes.`Run Name`")
    expect(names.filter(has_text="ui-grid")).to_have_count(1)
    names.filter(has_text="ui-grid").locator('[data-component-id$="runnamecellrenderer.tsx_46"]').click()  # expand
    expect(names.filter(has_text=re.compile(r"#000\d batch_size=[123]0 eta=0\.[123]\b"))).to_have_count(9)
    for header in ("batch_size", "eta", "validation_accuracy", "mlp_sweep.state", "mlp_sweep.best", "Dataset"):
        expect(page.locator(".ag-header-cell").filter(has_text=header).first).to_be_visible()
    states = _column(page, "tags.`mlp_sweep.state`")
    expect(states.filter(has_text="COMPLETE")).to_have_count(6)
    expect(states.filter(has_text="PRUNED")).to_have_count(3)
    dataset = re.compile(r"mnist-5k \([0-9a-f]{8}\)")  # name (digest), on the parent and every trial
    expect(_column(page, "attributes.`Dataset`").filter(has_text=dataset)).to_have_count(10)
    best = _column(page, "tags.`mlp_sweep.best`").filter(has_text="best")
    expect(best).to_have_count(1)
    best_row = best.locator("xpath=ancestor::div[@row-index]").get_attribute("row-index")
    best_name = page.locator(f'.ag-row[row-index="{best_row}"] .ag-cell[col-id="attributes.`Run Name`"]')
    expect(page.locator(".ag-row [data-testid='experiment-view-table-run-color']")).to_have_count(10)
    page.screenshot(path=shots / "runs.png")

    # The experiments list: the study with its description. Here, without the link's address, MLflow
    # shows its GenAI view until "Model training" is clicked once (the browser remembers it).
    page.goto(base + "/#/experiments")
    expect(page.get_by_role("row").filter(has_text="ui-grid")).to_contain_text("batch size by learning rate, 3 x 3")
    page.get_by_role("button", name="Model training").click()
    page.goto(link)
    names.filter(has_text="ui-grid").locator('[data-component-id$="runnamecellrenderer.tsx_46"]').click()

    # The best trial's run: the four per-epoch curves as line charts, the one-value metrics apart
    # (bar charts in a section of their own, above: folded away here).
    best_name.get_by_role("link").click()
    _model_training_side_bar(page)
    page.get_by_role("tab", name="Model metrics").click()
    sections = page.get_by_test_id("experiment-view-compare-runs-section-header")
    expect(sections.first).to_have_text(re.compile(r"^summary\s*\(5\)"))  # MLflow puts sections by prefix first
    sections.first.get_by_text("summary", exact=True).click()
    expect(sections.nth(1)).to_have_text(re.compile(r"^Model metrics\s*\(6\)"))
    for curve in (*CURVES, "epoch_seconds", "epoch_eta"):
        expect(page.get_by_text(curve, exact=True).first).to_be_visible()
    page.screenshot(path=shots / "trial.png")

    # The parent run: the study's summary, and its artifacts (the study file, the report's plots).
    page.goto(link)
    _column(page, "attributes.`Run Name`").get_by_role("link", name="ui-grid", exact=True).click()
    for metric in ("trials/complete", "trials/pruned", "trials/failed", "trials/best", "validation_accuracy"):
        expect(page.get_by_role("link", name=metric, exact=True)).to_be_visible()
    expect(page.get_by_text("Parameters (0)")).to_be_visible()
    page.screenshot(path=shots / "study.png")
    page.get_by_role("tab", name="Artifacts").click()
    for name in ("study.toml", "heatmap.png", "best_curves.png", "summary.txt"):
        expect(page.get_by_text(name, exact=True).first).to_be_visible()
    page.get_by_text("heatmap.png", exact=True).first.click()
    expect(page.get_by_role("img", name="heatmap.png")).to_be_visible()  # the preview
    page.screenshot(path=shots / "artifacts.png")


def _model_training_side_bar(page) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_role("link", name="Runs", exact=True)).to_be_visible()
    for genai in ("Sessions", "Judges", "Prompts"):
        expect(page.get_by_role("link", name=genai, exact=True)).to_have_count(0)


def _column(page, col_id: str):
    """The runs table's cells (not its header) of one column, e.g. ``tags.`mlp_sweep.state```."""
    return page.locator(f'.ag-row .ag-cell[col-id="{col_id}"]')
