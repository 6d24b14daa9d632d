"""results.md from its Jinja2 template (``templates/results.md.j2``, shipped in the package).

The template holds the page's prose and table layout; the filters below are its number formats.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jinja2
import pandas as pd

from finch.report import figures
from finch.report.stats import ALPHA, POWER

if TYPE_CHECKING:
    from finch.report.results import Report

TEMPLATE = "results.md.j2"
DASH = "—"  # a number that does not exist (one seed has no interval)


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def number(x, spec: str = ".4f") -> str:
    """``x`` formatted by ``spec`` (Python's format mini-language), or a dash when missing."""
    return DASH if _missing(x) else format(x, spec)


def interval(low: float, high: float, digits: int = 4) -> str:
    return DASH if _missing(low) else f"[{low:.{digits}f}, {high:.{digits}f}]"


def p_value(x: float) -> str:
    if _missing(x):
        return DASH
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def seeds(x: float) -> str:
    if _missing(x):
        return DASH
    return "∞" if math.isinf(x) else f"{int(x)}"


def rows(table: pd.DataFrame | None) -> list[dict]:
    """A table's rows as dicts (the template reads ``row.column`` or ``row[name]``)."""
    return [] if table is None else table.to_dict("records")


def environment() -> jinja2.Environment:
    """The Jinja2 environment of the report templates: no HTML escaping (markdown), block tags
    take no line of their own, and an undefined name is an error rather than an empty string."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("finch.report", "templates"),
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(f=format, num=number, p=p_value, seeds=seeds, rows=rows)
    env.globals.update(interval=interval, figures=figures, alpha=ALPHA, power=f"{POWER:.0%}")
    return env


def render_results(report: Report) -> str:
    """The text of results.md for ``report``."""
    card = report.card
    counts = {split: sum(c.values()) for split, c in card["target"]["counts"].items()} if card else {}
    return (
        environment()
        .get_template(TEMPLATE)
        .render(report=report, card=card, counts=counts, pct=f"{report.confidence:.0%}")
    )
