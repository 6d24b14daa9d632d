"""Look at the MLflow UI as a person would: a real headless Chromium on the runs page.

:func:`mlflow_ui` starts ``mlflow server`` on a free loopback port for a backend store and
stops it (the whole process group) afterwards. :func:`screenshot_runs` opens an experiment's
runs table in the *Model training* view, expands every parent run so that its nested child
runs (tag ``mlflow.parentRunId``) show under it, writes a PNG of the page and returns what it
saw: the top-level runs before expanding, every row after it with the parent the table nests
it under (from the indentation of its run name), and the "N matching runs" count.

The browser is the machine's Chromium (Debian's ``chromium``; ``FINCH_CHROMIUM`` names
another) driven by Playwright, which never downloads a browser of its own here::

    python -m finch.report.mlflow_ui --out reports/mlflow_runs.png [--experiment finch-default]

Only the run table, the expanders and the screenshot are required; cosmetic steps (extra
metric columns, a wider name column, closing the assistant panel) are best effort and listed
under ``notes`` in the result when the UI no longer offers them.
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
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

CHROMIUM_ENV = "FINCH_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome", "chrome")
INSTALL_BROWSER = (
    "install Debian's Chromium as root: apt-get update && apt-get install -y --no-install-recommends "
    "chromium fonts-liberation (scripts/setup.sh does this), or set FINCH_CHROMIUM to a Chrome/Chromium binary"
)
INSTALL_DRIVER = (
    "install the Python driver into the virtualenv: .venv/bin/python -m pip install playwright==1.65.2 "
    "(no `playwright install`: it drives the system Chromium)"
)
DEFAULT_EXPERIMENT = "finch-default"
DEFAULT_COLUMNS = ("accuracy", "accuracy.mean")
DEFAULT_HIDDEN = ("Dataset", "Source", "Models")

# The run-name cell holds the expand/collapse button of a parent run (MLflow 3.x,
# RunNameCellRenderer); the second selector is the same button by its generated component id.
NAME_CELL = '.ag-cell[col-id*="Run Name"]'
EXPANDER = f'{NAME_CELL} button, button[data-component-id*="runnamecellrenderer" i]'
RUN_LINK = 'a[href*="/runs/"]'

# One entry per run row (ag-grid renders a pinned row in two containers; merged by row-id),
# in display order; indent = the run name's offset inside its cell (children are indented).
_ROWS_JS = """
([nameCell, expander, runLink]) => {
  const rows = new Map();
  for (const r of document.querySelectorAll('.ag-row[row-id]')) {
    const id = r.getAttribute('row-id');
    const e = rows.get(id) || {run_id: id, index: Number(r.getAttribute('row-index')), name: null,
                               indent: null, expander: false};
    const cell = r.querySelector(nameCell);
    const link = (cell || r).querySelector(runLink);
    if (link) {
      e.name = link.innerText.trim();
      const base = cell ? cell.getBoundingClientRect().left : r.getBoundingClientRect().left;
      e.indent = Math.round(link.getBoundingClientRect().left - base);
    }
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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _absolute_uri(uri: str) -> str:
    """``sqlite:///relative.db`` made absolute, so the server's working directory does not matter."""
    path = _sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    return f"sqlite:///{path.resolve()}" + (uri[uri.index("?") :] if "?" in uri else "")


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no server output)"
    return "\n".join(lines[-n:]) or "(no server output)"


def _get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback only
        return json.loads(resp.read().decode())


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the server's process group (uvicorn and its workers), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def mlflow_ui(
    uri: str,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    artifacts_destination: str | None = None,
    timeout: float = 120.0,
    workers: int = 1,
) -> Iterator[str]:
    """Run ``mlflow server`` for the store ``uri`` and yield its base URL (``http://host:port``).

    Waits until ``/health`` answers; a server that exits or does not answer within ``timeout``
    seconds raises :class:`UIError` with the tail of its output. The server runs in its own
    process group, which is terminated on exit.
    """
    uri = _absolute_uri(uri)
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():  # mlflow server would create an empty store there
        raise UIError(f"no MLflow database at {db} (run the pipeline first, or give another --uri)")
    port = port or free_port(host)
    if artifacts_destination is None:
        root = db.parent if db is not None else Path(tempfile.gettempdir())
        artifacts_destination = (root / "mlartifacts").resolve().as_uri()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    base = f"http://{host}:{port}"
    with tempfile.TemporaryDirectory(prefix="finch-mlflow-ui-") as tmp:
        log_path = Path(tmp) / "server.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise UIError(
                        f"mlflow server exited with status {proc.returncode} before answering "
                        f"({' '.join(cmd)}); its output ends:\n{_tail(log_path)}"
                    )
                try:
                    with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise UIError(
                        f"mlflow server did not answer on {base}/health within {timeout:.0f} s "
                        f"({' '.join(cmd)}); its output ends:\n{_tail(log_path)}"
                    )
                time.sleep(0.25)
            yield base
        finally:
            _stop(proc)


def experiment_id(base_url: str, name: str) -> str:
    """The id of experiment ``name`` through the server's REST API; a clear error if absent."""
    query = urllib.parse.urlencode({"experiment_name": name})
    try:
        return _get_json(f"{base_url}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]["experiment_id"]
    except urllib.error.HTTPError as err:
        if err.code != 404:
            raise UIError(f"MLflow server at {base_url} failed to look up experiment {name!r}: {err}") from err
    try:
        found = _get_json(f"{base_url}/api/2.0/mlflow/experiments/search?max_results=1000")
        names = sorted(e["name"] for e in found.get("experiments", []))
    except (urllib.error.URLError, KeyError, ValueError):
        names = []
    raise UIError(f"no experiment named {name!r} in this store; it has: {', '.join(names) or 'none'}")


# --------------------------------------------------------------------------- the browser


def find_chromium() -> str | None:
    """``FINCH_CHROMIUM``, else the first Chromium/Chrome on ``PATH`` (Debian: /usr/bin/chromium)."""
    env = os.environ.get(CHROMIUM_ENV)
    if env:
        return env if (os.path.isfile(env) and os.access(env, os.X_OK)) else shutil.which(env)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


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
            else (f"none of {', '.join(CHROMIUM_NAMES)} is on PATH")
        )
        raise BrowserMissing(f"no Chromium found ({where}); {INSTALL_BROWSER}")
    return exe


@contextlib.contextmanager
def chromium_page(viewport: tuple[int, int] = (1600, 1000), executable: str | None = None) -> Iterator[Any]:
    """A Playwright page in a fresh headless Chromium (no sandbox: CI runs as root)."""
    exe = executable or require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=exe,
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


def dismiss_popups(page, notes: list[str] | None = None) -> list[str]:
    """Close the assistant side panel, onboarding tips and similar overlays; what was closed."""
    closed = []
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
                closed.append(label)
            except Exception as err:  # best effort
                if notes is not None:
                    notes.append(f"could not close {label}: {type(err).__name__}")
    if closed:
        page.wait_for_timeout(300)
    return closed


def read_rows(page) -> list[dict]:
    """The run rows the table shows now, in order: run_id, name, indent (px), expander."""
    return page.evaluate(_ROWS_JS, [NAME_CELL, EXPANDER, RUN_LINK])


def nest(rows: Sequence[dict]) -> list[dict]:
    """Each row with ``parent`` (run id or None): the nearest row above it that is less indented."""
    out, stack = [], []  # stack of (indent, run_id)
    for r in rows:
        indent = r.get("indent") or 0
        while stack and stack[-1][0] >= indent:
            stack.pop()
        out.append({**r, "parent": stack[-1][1] if stack else None})
        stack.append((indent, r["run_id"]))
    return out


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


def _wait_rows_change(page, before: list[str], timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    rows = read_rows(page)
    while [r["run_id"] for r in rows] == before and time.monotonic() < deadline:
        page.wait_for_timeout(150)
        rows = read_rows(page)
    return rows


def _wait_rows_stable(page, quiet: float = 0.6, timeout: float = 10.0) -> list[dict]:
    """Wait until the rows have not changed for ``quiet`` seconds (the first page has arrived)."""
    deadline = time.monotonic() + timeout
    rows = read_rows(page)
    since = time.monotonic()
    while time.monotonic() < deadline:
        page.wait_for_timeout(150)
        now = read_rows(page)
        if now != rows:
            rows, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return rows


def load_all(page, max_clicks: int = 50) -> int:
    """Click the table's "Load more" button until every page of runs is loaded."""
    clicks = 0
    button = page.get_by_role("button", name=re.compile(r"^\s*load more", re.I))
    while clicks < max_clicks and _visible(button):
        before = [r["run_id"] for r in read_rows(page)]
        button.first.click()
        clicks += 1
        _wait_rows_change(page, before)
    return clicks


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
        after = _wait_rows_change(page, before, timeout=5.0)
        if len(after) < len(before):  # it was expanded already
            button.click()
            _wait_rows_change(page, [r["run_id"] for r in after], timeout=5.0)
        fit_viewport(page, max_size)
    return clicks


def _tree_node(page, name: str):
    exact = re.compile(rf"^\s*{re.escape(name)}\s*$")
    return page.locator('[role="dialog"] [class*="tree-treenode"]').filter(has_text=exact)


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
        node = _tree_node(page, name)
        with contextlib.suppress(Exception):  # the filtered tree re-renders after a moment
            node.first.wait_for(state="visible", timeout=3000)
        if node.count() == 0:
            if want:
                notes.append(f"no column {name!r} in this experiment")
            continue
        node = node.first
        checked = "checkbox-checked" in (node.get_attribute("class") or "")
        if checked != want:
            node.locator('[class*="tree-checkbox"]').first.click()
            page.wait_for_timeout(150)
    search.fill("")
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)


def widen_name_column(page, width: int, notes: list[str]) -> None:
    """Drag the Run Name column's resize handle until the column is ``width`` px wide."""
    header = page.locator('.ag-header-cell[col-id*="Run Name"]').first
    try:
        box = header.bounding_box()
        handle = header.locator(".ag-header-cell-resize").first
        hbox = handle.bounding_box()
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


def runs_url(base_url: str, exp_id: str) -> str:
    """The runs table of an experiment in MLflow 3.x's hash router, in the Model training view."""
    return f"{base_url}/#/experiments/{exp_id}/runs?workflowType=machine_learning"


def screenshot_runs(
    uri: str | None,
    experiment_name: str,
    out_png: str | Path,
    *,
    base_url: str | None = None,
    viewport: tuple[int, int] = (1600, 1000),
    max_size: tuple[int, int] = (2600, 12000),
    columns: Sequence[str] = DEFAULT_COLUMNS,
    hide_columns: Sequence[str] = DEFAULT_HIDDEN,
    name_width: int = 360,
    expand: bool = True,
    timeout: float = 60.0,
    executable: str | None = None,
) -> dict:
    """Open ``experiment_name``'s runs table, expand the parent runs, write a PNG; what was seen.

    Starts an ``mlflow server`` for ``uri`` unless ``base_url`` names a running one. Returns
    ``url``, ``experiment_id``, ``top_level`` (rows before expanding: run_id, name, expander),
    ``rows`` (after expanding, each with the ``parent`` run id the table nests it under, or
    None), ``nesting`` (parent name → child names), ``nested`` (whether any child showed under
    a parent), ``expanded`` (clicks), ``matching_runs`` (the table's count), ``screenshot``,
    ``size`` ([width, height] of the PNG) and ``notes`` (cosmetic steps that did not apply).
    """
    exe = executable or require_browser()
    if base_url is None:
        if uri is None:
            raise ValueError("give a tracking uri or the base_url of a running MLflow server")
        with mlflow_ui(uri) as url:
            return screenshot_runs(
                None,
                experiment_name,
                out_png,
                base_url=url,
                viewport=viewport,
                max_size=max_size,
                columns=columns,
                hide_columns=hide_columns,
                name_width=name_width,
                expand=expand,
                timeout=timeout,
                executable=exe,
            )
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    from finch.io import atomic_path

    base_url = base_url.rstrip("/")
    exp_id = experiment_id(base_url, experiment_name)
    url = runs_url(base_url, exp_id)
    notes: list[str] = []
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
        _wait_rows_stable(page)
        dismiss_popups(page, notes)
        configure_columns(page, columns, hide_columns, notes)
        widen_name_column(page, name_width, notes)
        fit_viewport(page, max_size)
        load_all(page)
        fit_viewport(page, max_size)
        top_level = [{k: r[k] for k in ("run_id", "name", "expander")} for r in read_rows(page)]
        clicks = expand_all(page, max_size) if expand else 0
        dismiss_popups(page, notes)
        page.evaluate("() => document.activeElement && document.activeElement.blur && document.activeElement.blur()")
        page.mouse.move(0, 0)
        size = fit_viewport(page, max_size)
        page.wait_for_timeout(300)
        rows = nest(read_rows(page))
        body = page.evaluate("() => document.body.innerText")
        match = re.search(r"(\d[\d,]*)\s+matching runs?", body)
        if page.evaluate(_OVERFLOW_JS)["dh"] > 0:
            notes.append(f"the page reached {size[0]}x{size[1]} px; runs below it are not in the screenshot")
        out_png = Path(out_png)
        with atomic_path(out_png) as tmp:
            page.screenshot(path=str(tmp), type="png", full_page=True, animations="disabled")
    names = {r["run_id"]: r["name"] for r in rows}
    nesting: dict[str, list[str]] = {}
    for r in rows:
        if r["parent"] is not None:
            nesting.setdefault(names[r["parent"]], []).append(r["name"])
    from PIL import Image

    with Image.open(out_png) as img:
        png_size = list(img.size)
    return {
        "url": url,
        "experiment_id": exp_id,
        "top_level": top_level,
        "rows": rows,
        "nesting": nesting,
        "nested": bool(nesting),
        "expanded": clicks,
        "matching_runs": int(match.group(1).replace(",", "")) if match else None,
        "screenshot": str(out_png),
        "size": png_size,
        "notes": notes,
    }


# --------------------------------------------------------------------------- command line


def default_uri() -> str:
    from finch.io import shared_root

    return f"sqlite:///{shared_root() / 'mlflow.db'}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m finch.report.mlflow_ui",
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
    parser.add_argument("--json", action="store_true", help="print what was seen as JSON")
    args = parser.parse_args(argv)
    uri = None if args.url else (args.uri or default_uri())
    try:
        seen = screenshot_runs(
            uri,
            args.experiment,
            args.out,
            base_url=args.url,
            viewport=(args.width, args.height),
            columns=[c.strip() for c in args.columns.split(",") if c.strip()],
            expand=not args.no_expand,
            timeout=args.timeout,
        )
    except UIError as err:
        print(f"mlflow_ui: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(seen, indent=2))
    else:
        children = sum(len(v) for v in seen["nesting"].values())
        print(
            f"mlflow_ui: {args.experiment}: {len(seen['top_level'])} top-level runs, {len(seen['nesting'])} parents "
            f"expanded showing {children} nested runs ({seen['matching_runs']} matching runs); "
            f"{seen['screenshot']} {seen['size'][0]}x{seen['size'][1]}"
        )
        for note in seen["notes"]:
            print(f"mlflow_ui: note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
