"""The MLflow UI in a real headless Chromium: parent runs listed, seed runs nested under them."""

from __future__ import annotations

import socket
import urllib.parse
from pathlib import Path

import pytest

from finch.report import mlflow_ui
from finch.report.mlflow_ui import BrowserMissing, UIError, find_chromium, nest

EXPERIMENT = "finch-uitest"
FAMILIES = {"teacher/summary": ("teacher", "", 3), "student/none/summary": ("student", "none", 2)}


def make_store(tmp_path: Path) -> tuple[str, dict[str, str], dict[str, list[str]]]:
    """Two summary runs, each with seed runs nested under it by ``mlflow.parentRunId``."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "mlartifacts").as_uri())
    names, children = {}, {}
    for parent_name, (stage, variant, seeds) in FAMILIES.items():
        tags = {"finch.kind": "summary", "finch.stage": stage, "finch.variant": variant}
        parent = client.create_run(exp, run_name=parent_name, tags=tags).info.run_id
        client.log_metric(parent, "accuracy.mean", 0.8)
        client.set_terminated(parent)
        names[parent] = parent_name
        children[parent] = []
        for seed in range(seeds):
            child_name = f"{parent_name.removesuffix('/summary')}/seed={seed}"
            child_tags = {
                "mlflow.parentRunId": parent,
                "finch.stage": stage,
                "finch.variant": variant,
                "finch.seed": str(seed),
            }
            child = client.create_run(exp, run_name=child_name, tags=child_tags).info.run_id
            client.log_metric(child, "accuracy", 0.7 + seed / 100)
            client.set_terminated(child)
            names[child] = child_name
            children[parent].append(child)
    return uri, names, children


def port_open(base_url: str) -> bool:
    url = urllib.parse.urlsplit(base_url)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((url.hostname, url.port)) == 0


def test_nest_from_indentation():
    rows = [
        {"run_id": "p1", "indent": 56},
        {"run_id": "c1", "indent": 80},
        {"run_id": "c2", "indent": 80},
        {"run_id": "p2", "indent": 56},
        {"run_id": "c3", "indent": 80},
    ]
    assert [r["parent"] for r in nest(rows)] == [None, "p1", "p1", None, "p2"]


def test_missing_browser_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv(mlflow_ui.CHROMIUM_ENV, str(tmp_path / "no-such-chromium"))
    with pytest.raises(BrowserMissing, match="install"):
        mlflow_ui.require_browser()


@pytest.mark.slow
def test_runs_page_nests_seed_runs_under_summary_runs(tmp_path):
    pytest.importorskip("playwright.sync_api", reason="Playwright not installed (pip install playwright)")
    if find_chromium() is None:
        pytest.skip("no Chromium executable (apt-get install chromium, or set FINCH_CHROMIUM)")
    from PIL import Image

    uri, names, children = make_store(tmp_path)
    parents = set(children)
    child_ids = {c for cs in children.values() for c in cs}
    out = tmp_path / "shots" / "runs.png"

    with mlflow_ui.mlflow_ui(uri) as base:
        assert port_open(base)
        with pytest.raises(UIError, match="no-such-experiment"):
            mlflow_ui.experiment_id(base, "no-such-experiment")
        seen = mlflow_ui.screenshot_runs(None, EXPERIMENT, out, base_url=base, viewport=(1600, 1000))
    assert not port_open(base), "the server should be stopped when the context exits"

    # (a) the summary runs are the table's top-level rows, each with an expander
    top = {r["run_id"]: r for r in seen["top_level"]}
    assert set(top) == parents, seen["top_level"]
    assert {top[p]["name"] for p in parents} == set(FAMILIES)
    assert all(top[p]["expander"] for p in parents)
    # (b) before expanding no seed run is a top-level row; after it, each one sits in a block
    # right under its own parent, indented further than the parent
    assert not child_ids & set(top)
    rows = seen["rows"]
    by_id = {r["run_id"]: r for r in rows}
    assert set(by_id) == parents | child_ids
    assert seen["expanded"] == len(parents)
    order = [r["run_id"] for r in rows]
    for parent, kids in children.items():
        assert by_id[parent]["parent"] is None
        i = order.index(parent)
        assert set(order[i + 1 : i + 1 + len(kids)]) == set(kids), (names[parent], [names[o] for o in order])
        for kid in kids:
            assert by_id[kid]["parent"] == parent
            assert by_id[kid]["name"] == names[kid]
            assert by_id[kid]["indent"] > by_id[parent]["indent"]
            assert not by_id[kid]["expander"]
    assert seen["nested"]
    assert {p: sorted(c) for p, c in seen["nesting"].items()} == {
        names[p]: sorted(names[k] for k in kids) for p, kids in children.items()
    }
    assert seen["matching_runs"] == len(parents) + len(child_ids)
    assert not [n for n in seen["notes"] if "column" in n], seen["notes"]
    # (c) a real screenshot: the viewport's size at least, and not a blank page
    assert out.is_file() and out.stat().st_size > 20_000
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size[0] >= 1600 and img.size[1] >= 1000
        assert list(img.size) == seen["size"]
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 100
