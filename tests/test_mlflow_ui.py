"""Seed runs are nested under their summary run (MLflow's API says so), and the screenshot tool
(scripts/mlflow_screenshot.py) shows them in a real headless Chromium."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from .conftest import REPO
from .servers import mlflow_server

EXPERIMENT = "finch-uitest"
FAMILIES = {"teacher/summary": ("teacher", "", 3), "student/none/summary": ("student", "none", 2)}
SCRIPT = REPO / "scripts" / "mlflow_screenshot.py"


def load_screenshot_script():
    spec = importlib.util.spec_from_file_location("mlflow_screenshot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


screenshot = load_screenshot_script()


def make_store(tmp_path: Path) -> tuple[str, dict[str, str], dict[str, list[str]]]:
    """Two summary runs, each with seed runs nested under it by ``mlflow.parentRunId``:
    the store URI, run id → name, and parent id → child ids."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "mlartifacts").as_uri())
    names, children = {}, {}
    for parent_name, (stage, variant, seeds) in FAMILIES.items():
        tags = {"finch.kind": "summary", "finch.stage": stage, "finch.variant": variant}
        parent = client.create_run(exp, run_name=parent_name, tags=tags).info.run_id
        client.log_metric(parent, "accuracy_mean", 0.8)
        client.set_terminated(parent)
        names[parent], children[parent] = parent_name, []
        for seed in range(seeds):
            child_name = f"{parent_name.removesuffix('/summary')}/seed={seed}"
            child_tags = {"mlflow.parentRunId": parent, "finch.stage": stage, "finch.variant": variant}
            child = client.create_run(exp, run_name=child_name, tags={**child_tags, "finch.seed": str(seed)})
            client.log_metric(child.info.run_id, "accuracy", 0.7 + seed / 100)
            client.set_terminated(child.info.run_id)
            names[child.info.run_id] = child_name
            children[parent].append(child.info.run_id)
    return uri, names, children


def test_seed_runs_are_children_of_their_summary_run(tmp_path):
    uri, names, children = make_store(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    for parent, kids in children.items():
        found = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
        assert sorted(r.info.run_id for r in found) == sorted(kids), names[parent]
    summaries = client.search_runs([exp], filter_string="tags.`finch.kind` = 'summary'")
    assert {r.info.run_id for r in summaries} == set(children)
    assert not any("mlflow.parentRunId" in r.data.tags for r in summaries)


def test_script_help_runs_standalone():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "--experiment" in out.stdout, out.stderr


def test_missing_browser_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv(screenshot.CHROMIUM_ENV, str(tmp_path / "no-such-chromium"))
    with pytest.raises(screenshot.BrowserMissing, match="install"):
        screenshot.require_browser()


def test_missing_store_is_named(tmp_path):
    with (
        pytest.raises(screenshot.UIError, match="no MLflow database at"),
        screenshot.serve(f"sqlite:///{tmp_path}/x.db"),
    ):
        pass


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """One MLflow server over the two-family store for the browser tests (a server start each
    cost seconds): its URL, run id → name and parent id → child ids. The summary runs also log
    ``accuracy_ci_low``, so the charts view has two metrics to draw."""
    pytest.importorskip("playwright.sync_api", reason="Playwright not installed (bash scripts/setup-test.sh)")
    if screenshot.find_chromium() is None:
        pytest.skip("no Chromium executable (bash scripts/setup-test.sh as root, or set FINCH_CHROMIUM)")
    root = tmp_path_factory.mktemp("ui-store")
    uri, names, children = make_store(root)
    client = MlflowClient(tracking_uri=uri)
    for run_id in children:
        client.log_metric(run_id, "accuracy_ci_low", 0.75)
    with mlflow_server(uri, (root / "mlartifacts").as_uri()) as base:
        yield SimpleNamespace(base=base, names=names, children=children)


@pytest.mark.slow
def test_screenshot_shows_the_runs_in_a_real_browser(ui, tmp_path):
    from PIL import Image

    names, children = ui.names, ui.children
    out = tmp_path / "shots" / "runs.png"
    with pytest.raises(screenshot.UIError, match="no-such-experiment"):
        screenshot.experiment_id(ui.base, "no-such-experiment")
    seen = screenshot.screenshot_runs(ui.base, EXPERIMENT, out, viewport=(1600, 1000))

    # the summary runs are the table's top-level rows; expanded, every run shows
    assert sorted(seen["top_level"]) == sorted(FAMILIES)
    assert seen["expanded"] == len(children)
    assert sorted(seen["shown"]) == sorted(names.values())
    assert seen["matching_runs"] == len(names)
    assert not [n for n in seen["notes"] if "column" in n], seen["notes"]
    # a real screenshot: the viewport's size at least, and not a blank page
    assert out.is_file() and out.stat().st_size > 20_000
    with Image.open(out) as img:
        assert img.format == "PNG" and list(img.size) == seen["size"]
        assert img.size[0] >= 1600 and img.size[1] >= 1000
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 100


@pytest.mark.slow
def test_charts_view_shows_a_chart_per_summary_metric_without_adding_any(ui, tmp_path):
    """The charts view of one study's summary runs (the README's second picture): MLflow draws
    a chart per metric those runs logged, with a bar per run, filtered to that study."""
    out = tmp_path / "chart.png"
    query = "tags.`finch.kind` = 'summary' AND tags.`finch.stage` = 'student'"
    seen = screenshot.screenshot_chart(ui.base, EXPERIMENT, out, query, viewport=(1600, 1000))
    assert seen["charts"] == ["accuracy_ci_low", "accuracy_mean"]  # one per metric, none added by hand
    assert seen["runs"] == ["student/none/summary"]  # the filter keeps the one study's summary runs
    assert out.is_file() and out.stat().st_size > 20_000
