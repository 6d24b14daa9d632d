"""Screenshot the MLflow runs table with every parent run expanded (the README's picture).

Starts ``mlflow server`` on a free loopback port for the store (unless ``--url`` names a running
server), opens the experiment's runs table in a headless Chromium driven by Playwright, expands
each summary run so that its seed runs show under it, and writes a PNG::

    python scripts/mlflow_screenshot.py --out reports/mlflow_runs.png [--experiment finch-default]

The browser is the machine's Chromium (Debian's ``chromium``; ``FINCH_CHROMIUM`` names another);
Playwright (a dev dependency: requirements-dev.lock) never downloads one of its own here. Only the
table, the expanders and the screenshot are required; cosmetic steps (extra metric columns, a
wider name column, closing the assistant panel) are best effort and reported as notes.
Which run is whose parent is MLflow's data (tag ``mlflow.parentRunId``), not this page's:
tests/test_mlflow_ui.py checks it through MLflow's API.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

CHROMIUM_ENV = "FINCH_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome", "chrome")
INSTALL_BROWSER = (
    "install Debian's Chromium as root: apt-get update && apt-get install -y --no-install-recommends "
    "chromium fonts-liberation (scripts/setup-test.sh does this), or set FINCH_CHROMIUM to a Chrome/Chromium binary"
)
INSTALL_DRIVER = (
    "install the test dependencies: bash scripts/setup-test.sh (or .venv/bin/python -m pip install -r "
    "requirements-dev.lock; no `playwright install`: it drives the system Chromium)"
)
DEFAULT_EXPERIMENT = "finch-default"
DEFAULT_COLUMNS = ("accuracy", "accuracy_mean")  # a seed run's accuracy, a summary run's mean
DEFAULT_HIDDEN = ("Source", "Models")  # the Dataset column stays: which prepared splits a run saw

# The run-name cell holds the expand/collapse button of a parent run (MLflow 3.x,
# RunNameCellRenderer); the second selector is the same button by its generated component id.
NAME_CELL = '.ag-cell[col-id*="Run Name"]'
EXPANDER = f'{NAME_CELL} button, button[data-component-id*="runnamecellrenderer" i]'
RUN_LINK = 'a[href*="/runs/"]'

# One entry per run row (ag-grid renders a pinned row in two containers; merged by row-id), in
# display order: run_id, the run name shown, whether it has an expander.
_ROWS_JS = """
([nameCell, expander, runLink]) => {
  const rows = new Map();
  for (const r of document.querySelectorAll('.ag-row[row-id]')) {
    const id = r.getAttribute('row-id');
    const e = rows.get(id) || {run_id: id, index: Number(r.getAttribute('row-index')), name: null, expander: false};
    const link = (r.querySelector(nameCell) || r).querySelector(runLink);
    if (link) e.name = link.innerText.trim();
    if (r.querySelector(expander)) e.expander = true;
    rows.set(id, e);
  }
  return [...rows.values()].filter(e => e.name !== null).sort((a, b) => a.index - b.index);
}
"""

# How much more room the grid wants than it has (rows and columns are virtualised: only what
# fits in the viewport is rendered, so the page is grown until everything is).
_OVERFLOW_JS = """
() => {
  const over = (sel, dim) => Math.max(0, ...Array.from(document.querySelectorAll(sel)).map(
    e => dim === 'h' ? e.scrollHeight - e.clientHeight : e.scrollWidth - e.clientWidth));
  return {
    dh: over('.ag-body-viewport', 'h'),
    dw: over('.ag-center-cols-viewport, .ag-body-horizontal-scroll-viewport, .ag-body-viewport', 'w'),
  };
}
"""


class UIError(RuntimeError):
    """The MLflow UI could not be started or shown; the message says what to do."""


class BrowserMissing(UIError):
    """No Chromium executable or no Playwright; the message names the install command."""


# --------------------------------------------------------------------------- the server


def _sqlite_path(uri: str) -> Path | None:
    path = uri.removeprefix("sqlite:///").split("?", 1)[0] if uri.startswith("sqlite:///") else ""
    return Path(path).resolve() if path and path != ":memory:" else None


@contextlib.contextmanager
def serve(uri: str, timeout: float = 120.0) -> Iterator[str]:
    """``mlflow server`` for the store ``uri`` on a free 127.0.0.1 port; yields its base URL.

    Stops the server's whole process group on exit; a server that exits or does not answer
    ``/health`` within ``timeout`` seconds raises :class:`UIError` with the end of its output.
    """
    db = _sqlite_path(uri)
    if db is not None:
        if not db.is_file():  # mlflow server would create an empty store there
            raise UIError(f"no MLflow database at {db} (run the pipeline first, or give another --uri)")
        uri = f"sqlite:///{db}"  # absolute: the server's working directory does not matter
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    artifacts = ((db.parent if db else Path(tempfile.gettempdir())) / "mlartifacts").as_uri()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--serve-artifacts"]
    cmd += ["--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

        def fail(why: str) -> UIError:
            log.seek(0)
            tail = "\n".join(log.read().decode(errors="replace").splitlines()[-40:])
            return UIError(f"mlflow server {why} ({' '.join(cmd)}); its output ends:\n{tail}")

        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise fail(f"exited with status {proc.returncode} before answering")
                with contextlib.suppress(urllib.error.URLError, OSError):
                    with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:  # loopback only
                        if resp.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise fail(f"did not answer on {base}/health within {timeout:.0f} s")
                time.sleep(0.25)
            yield base
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):  # uvicorn and its workers
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
                    break


def experiment_id(base_url: str, name: str) -> str:
    """The id of experiment ``name`` on the server; :class:`UIError` listing the others if absent."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=base_url)
    found = client.get_experiment_by_name(name)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise UIError(f"no experiment named {name!r} in this store; it has: {', '.join(names) or 'none'}")
    return found.experiment_id


# --------------------------------------------------------------------------- the browser


def find_chromium() -> str | None:
    """``FINCH_CHROMIUM``, else the first Chromium/Chrome on ``PATH`` (Debian: /usr/bin/chromium)."""
    env = os.environ.get(CHROMIUM_ENV)
    if env:
        return env if (os.path.isfile(env) and os.access(env, os.X_OK)) else shutil.which(env)
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def require_browser() -> str:
    """The Chromium executable, with Playwright importable; else :class:`BrowserMissing`."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        raise BrowserMissing(f"Playwright is not installed ({err}); {INSTALL_DRIVER}") from err
    exe = find_chromium()
    if exe is None:
        where = (
            f"{CHROMIUM_ENV}={os.environ[CHROMIUM_ENV]!r} is not executable"
            if os.environ.get(CHROMIUM_ENV)
            else f"none of {', '.join(CHROMIUM_NAMES)} is on PATH"
        )
        raise BrowserMissing(f"no Chromium found ({where}); {INSTALL_BROWSER}")
    return exe


@contextlib.contextmanager
def chromium_page(viewport: tuple[int, int], executable: str) -> Iterator[Any]:
    """A Playwright page in a fresh headless Chromium (no sandbox: CI runs as root)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=executable,
            headless=True,
            chromium_sandbox=False,  # → --no-sandbox; Chromium refuses to run as root otherwise
            args=["--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--hide-scrollbars"],
        )
        try:
            context = browser.new_context(
                viewport={"width": viewport[0], "height": viewport[1]}, device_scale_factor=1, locale="en-US"
            )
            yield context.new_page()
        finally:
            browser.close()


def _visible(locator) -> bool:
    try:
        return locator.count() > 0 and locator.first.is_visible()
    except Exception:  # a detached element is simply not visible
        return False


def dismiss_popups(page, notes: list[str]) -> None:
    """Close the assistant side panel, onboarding tips and similar overlays (best effort)."""
    candidates = [
        ("assistant panel", page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]')),
        ("dialog close", page.locator('[role="dialog"] button[aria-label="Close"]')),
    ]
    for text in ("Got it", "Dismiss", "No thanks", "Maybe later", "Skip"):
        candidates.append((text, page.get_by_role("button", name=text, exact=True)))
    for label, loc in candidates:
        if _visible(loc):
            try:
                loc.first.click(timeout=3000)
                page.wait_for_timeout(300)
            except Exception as err:
                notes.append(f"could not close {label}: {type(err).__name__}")


def read_rows(page) -> list[dict]:
    """The run rows the table shows now, in order: run_id, name, expander."""
    return page.evaluate(_ROWS_JS, [NAME_CELL, EXPANDER, RUN_LINK])


def fit_viewport(page, max_size: tuple[int, int]) -> tuple[int, int]:
    """Grow the viewport until the grid needs no scrolling (bounded by ``max_size``)."""
    for _ in range(4):
        vp = page.viewport_size
        over = page.evaluate(_OVERFLOW_JS)
        w = min(max_size[0], vp["width"] + int(over["dw"]))
        h = min(max_size[1], vp["height"] + int(over["dh"]))
        if (w, h) == (vp["width"], vp["height"]):
            break
        page.set_viewport_size({"width": w, "height": h})
        page.wait_for_timeout(400)
    vp = page.viewport_size
    return vp["width"], vp["height"]


def _wait_rows(page, before: list[str] | None = None, quiet: float = 0.6, timeout: float = 10.0) -> list[dict]:
    """Rows once they differ from ``before`` (given), else once unchanged for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    rows, since = read_rows(page), time.monotonic()
    while time.monotonic() < deadline:
        if before is not None and [r["run_id"] for r in rows] != before:
            break
        page.wait_for_timeout(150)
        now = read_rows(page)
        if now != rows:
            rows, since = now, time.monotonic()
        elif before is None and time.monotonic() - since >= quiet:
            break
    return rows


def load_all(page, max_clicks: int = 50) -> None:
    """Click the table's "Load more" button until every page of runs is loaded."""
    button = page.get_by_role("button", name=re.compile(r"^\s*load more", re.I))
    for _ in range(max_clicks):
        if not _visible(button):
            return
        before = [r["run_id"] for r in read_rows(page)]
        button.first.click()
        _wait_rows(page, before)


def expand_all(page, max_size: tuple[int, int], max_clicks: int = 500) -> int:
    """Click every parent run's expander once, so its children show; returns the clicks.

    A click that removed rows collapsed an already expanded parent, and is undone.
    """
    done: set[str] = set()
    clicks = 0
    while clicks < max_clicks:
        rows = read_rows(page)
        todo = [r for r in rows if r["expander"] and r["run_id"] not in done]
        if not todo:
            break
        rid = todo[0]["run_id"]
        done.add(rid)
        button = page.locator(f'.ag-row[row-id="{rid}"]').locator(EXPANDER).first
        before = [r["run_id"] for r in rows]
        button.click()
        clicks += 1
        after = _wait_rows(page, before, timeout=5.0)
        if len(after) < len(before):  # it was expanded already
            button.click()
            _wait_rows(page, [r["run_id"] for r in after], timeout=5.0)
        fit_viewport(page, max_size)
    return clicks


def configure_columns(page, show: Sequence[str], hide: Sequence[str], notes: list[str]) -> None:
    """Tick metric/tag/attribute columns in ``show`` and untick those in ``hide`` (best effort)."""
    if not show and not hide:
        return
    try:
        page.get_by_role("button", name="Columns", exact=True).first.click(timeout=5000)
        search = page.locator('[role="dialog"] input[placeholder="Search columns"]').first
        search.wait_for(timeout=5000)
    except Exception as err:
        notes.append(f"column selector not found ({type(err).__name__}); default columns kept")
        page.keyboard.press("Escape")
        return
    for name, want in [(n, True) for n in show] + [(n, False) for n in hide]:
        search.fill(name)
        exact = re.compile(rf"^\s*{re.escape(name)}\s*$")
        node = page.locator('[role="dialog"] [class*="tree-treenode"]').filter(has_text=exact)
        with contextlib.suppress(Exception):  # the filtered tree re-renders after a moment
            node.first.wait_for(state="visible", timeout=3000)
        if node.count() == 0:
            if want:
                notes.append(f"no column {name!r} in this experiment")
            continue
        checked = "checkbox-checked" in (node.first.get_attribute("class") or "")
        if checked != want:
            node.first.locator('[class*="tree-checkbox"]').first.click()
            page.wait_for_timeout(150)
    search.fill("")
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)


def widen_name_column(page, width: int, notes: list[str]) -> None:
    """Drag the Run Name column's resize handle until the column is ``width`` px wide."""
    header = page.locator('.ag-header-cell[col-id*="Run Name"]').first
    handle = header.locator(".ag-header-cell-resize").first
    try:
        box, hbox = header.bounding_box(), handle.bounding_box()
    except Exception:
        box = hbox = None
    if not box or not hbox:
        notes.append("run name column not resizable; default width kept")
        return
    delta = width - box["width"]
    if delta <= 0:
        return
    x, y = hbox["x"] + hbox["width"] / 2, hbox["y"] + hbox["height"] / 2
    handle.hover()
    page.mouse.down()
    steps = max(1, int(delta // 10))
    for k in range(1, steps + 1):
        page.mouse.move(x + delta * k / steps, y)
        page.wait_for_timeout(15)
    page.mouse.up()
    page.wait_for_timeout(200)


def screenshot_runs(
    base_url: str,
    experiment_name: str,
    out_png: str | Path,
    *,
    viewport: tuple[int, int] = (1600, 1000),
    max_size: tuple[int, int] = (2600, 12000),
    columns: Sequence[str] = DEFAULT_COLUMNS,
    hide_columns: Sequence[str] = DEFAULT_HIDDEN,
    name_width: int = 360,
    expand: bool = True,
    timeout: float = 60.0,
) -> dict:
    """Open ``experiment_name``'s runs table on the server at ``base_url``, expand the parent
    runs and write a PNG of the page. Returns what was shown: ``url``, ``top_level`` (run names
    before expanding), ``shown`` (run names after it), ``expanded`` (clicks), ``matching_runs``
    (the table's count), ``screenshot``, ``size`` ([width, height]) and ``notes``."""
    exe = require_browser()
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    from finch.io import atomic_path

    base_url = base_url.rstrip("/")
    url = f"{base_url}/#/experiments/{experiment_id(base_url, experiment_name)}/runs?workflowType=machine_learning"
    notes: list[str] = []
    out_png = Path(out_png)
    with chromium_page(viewport, exe) as page:
        page.set_default_timeout(timeout * 1000)
        page.goto(url, wait_until="domcontentloaded")
        try:
            page.wait_for_function(
                """() => document.querySelector('.ag-row[row-id] a[href*="/runs/"]')
                     || /no runs (logged|have been logged)/i.test(document.body.innerText)""",
                timeout=timeout * 1000,
            )
        except PlaywrightTimeout as err:
            text = page.evaluate("() => document.body.innerText.slice(0, 600)")
            raise UIError(
                f"the runs table of {experiment_name!r} did not render within {timeout:.0f} s at {url}; "
                f"the page shows: {text!r}"
            ) from err
        _wait_rows(page)
        dismiss_popups(page, notes)
        configure_columns(page, columns, hide_columns, notes)
        widen_name_column(page, name_width, notes)
        fit_viewport(page, max_size)
        load_all(page)
        fit_viewport(page, max_size)
        top_level = [r["name"] for r in read_rows(page)]
        clicks = expand_all(page, max_size) if expand else 0
        dismiss_popups(page, notes)
        page.evaluate("() => document.activeElement && document.activeElement.blur && document.activeElement.blur()")
        page.mouse.move(0, 0)
        size = fit_viewport(page, max_size)
        page.wait_for_timeout(300)
        shown = [r["name"] for r in read_rows(page)]
        match = re.search(r"(\d[\d,]*)\s+matching runs?", page.evaluate("() => document.body.innerText"))
        if page.evaluate(_OVERFLOW_JS)["dh"] > 0:
            notes.append(f"the page reached {size[0]}x{size[1]} px; runs below it are not in the screenshot")
        with atomic_path(out_png) as tmp:
            page.screenshot(path=str(tmp), type="png", full_page=True, animations="disabled")
    from PIL import Image

    with Image.open(out_png) as img:
        png_size = list(img.size)
    return {
        "url": url,
        "top_level": top_level,
        "shown": shown,
        "expanded": clicks,
        "matching_runs": int(match.group(1).replace(",", "")) if match else None,
        "screenshot": str(out_png),
        "size": png_size,
        "notes": notes,
    }


def screenshot_chart(
    base_url: str,
    experiment_name: str,
    out_png: str | Path,
    search_filter: str,
    *,
    viewport: tuple[int, int] = (1600, 1000),
    timeout: float = 60.0,
) -> dict:
    """Open ``experiment_name``'s charts view (``compareRunsMode=CHART``) for the runs matching
    ``search_filter`` (MLflow's search syntax, e.g. a study's summary runs) and write a PNG of it.
    MLflow draws a chart per logged metric by itself; returns ``url``, ``charts`` (the chart
    titles found on the page), ``runs`` (the run names in the chart legend or run list),
    ``screenshot``, ``size`` and ``notes``."""
    exe = require_browser()
    from urllib.parse import quote

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    from finch.io import atomic_path

    base_url = base_url.rstrip("/")
    exp = experiment_id(base_url, experiment_name)
    url = (
        f"{base_url}/#/experiments/{exp}/runs?workflowType=machine_learning&compareRunsMode=CHART"
        f"&searchFilter={quote(search_filter)}"
    )
    notes: list[str] = []
    out_png = Path(out_png)
    with chromium_page(viewport, exe) as page:
        page.set_default_timeout(timeout * 1000)
        page.goto(url, wait_until="domcontentloaded")
        try:  # a chart is an svg (plotly) in a card; wait until several have drawn
            page.wait_for_function(
                "() => document.querySelectorAll('.js-plotly-plot, .main-svg').length >= 2", timeout=timeout * 1000
            )
        except PlaywrightTimeout as err:
            text = page.evaluate("() => document.body.innerText.slice(0, 600)")
            raise UIError(
                f"the charts view of {experiment_name!r} drew no chart within {timeout:.0f} s at {url}; "
                f"the page shows: {text!r}"
            ) from err
        page.wait_for_timeout(1500)
        dismiss_popups(page, notes)
        page.mouse.move(0, 0)
        text = page.evaluate("() => document.body.innerText")
        with atomic_path(out_png) as tmp:
            page.screenshot(path=str(tmp), type="png", full_page=True, animations="disabled")
    from PIL import Image

    with Image.open(out_png) as img:
        png_size = list(img.size)
    charts = sorted(set(re.findall(r"\b([a-z0-9_]+_(?:mean|ci_low|ci_high))\b", text)))
    runs = sorted(set(re.findall(r"\b([a-z_]+/[A-Za-z0-9_.]+/summary)\b", text)))
    return {"url": url, "charts": charts, "runs": runs, "screenshot": str(out_png), "size": png_size, "notes": notes}


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/mlflow_screenshot.py",
        description="Screenshot the MLflow runs table (parent runs expanded) in headless Chromium.",
    )
    parser.add_argument("--out", type=Path, default=Path("reports/mlflow_runs.png"), help="PNG to write")
    parser.add_argument("--uri", help="backend store (default: sqlite:///<repo>/mlflow.db)")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="experiment name (default: %(default)s)")
    parser.add_argument("--url", help="use this running MLflow server instead of starting one")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000, help="initial height; grows to fit the table")
    parser.add_argument(
        "--columns", default=",".join(DEFAULT_COLUMNS), help="metric/tag columns to show, comma-separated"
    )
    parser.add_argument("--no-expand", action="store_true", help="leave parent runs collapsed")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the page")
    parser.add_argument("--json", action="store_true", help="print what was shown as JSON")
    parser.add_argument(
        "--chart",
        metavar="STAGE",
        help="instead of the runs table: the charts view of STAGE's summary runs (one chart per metric)",
    )
    args = parser.parse_args(argv)

    def shoot(base_url: str) -> dict:
        if args.chart:
            query = f"tags.`finch.kind` = 'summary' AND tags.`finch.stage` = '{args.chart}'"
            return screenshot_chart(
                base_url, args.experiment, args.out, query, viewport=(args.width, args.height), timeout=args.timeout
            )
        return screenshot_runs(
            base_url,
            args.experiment,
            args.out,
            viewport=(args.width, args.height),
            columns=[c.strip() for c in args.columns.split(",") if c.strip()],
            expand=not args.no_expand,
            timeout=args.timeout,
        )

    try:
        if args.url:
            seen = shoot(args.url)
        else:
            from finch.io import shared_root

            with serve(args.uri or f"sqlite:///{shared_root() / 'mlflow.db'}") as base_url:
                seen = shoot(base_url)
    except UIError as err:
        print(f"mlflow_screenshot: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(seen, indent=2))
    elif args.chart:
        print(
            f"mlflow_screenshot: {args.experiment}: charts view of {args.chart}'s summary runs: "
            f"{len(seen['charts'])} metric charts, runs {seen['runs']}; "
            f"{seen['screenshot']} {seen['size'][0]}x{seen['size'][1]}"
        )
    else:
        print(
            f"mlflow_screenshot: {args.experiment}: {len(seen['top_level'])} top-level runs, {seen['expanded']} "
            f"expanded, {len(seen['shown'])} runs shown ({seen['matching_runs']} matching runs); "
            f"{seen['screenshot']} {seen['size'][0]}x{seen['size'][1]}"
        )
        for note in seen["notes"]:
            print(f"mlflow_screenshot: note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
