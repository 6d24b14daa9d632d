"""The README's headline numbers must be the ones the stages computed."""

from pathlib import Path

import pandas as pd
import pytest

from finch.report.headline import END, START, headline_table, readme_block, render_from_reports, update_readme

ROOT = Path(__file__).resolve().parents[1]


def test_readme_headline_matches_reports():
    block = readme_block(ROOT / "README.md")
    assert block is not None, "README.md lacks the headline markers"
    assert block == render_from_reports(ROOT / "reports"), (
        "README.md's headline table differs from reports/headline.md: run `finch readme` and commit"
    )
    assert block == (ROOT / "reports" / "headline.md").read_text()


def test_a_typed_number_in_the_readme_is_caught(tmp_path):
    budgets = pd.DataFrame(
        [{"stage": "teacher", "variant": "default", "steps": 0, "last": True, "n": 5, "test_accuracy": 0.7123,
          "low": 0.70, "high": 0.72}]
    )  # fmt: skip
    table = headline_table(budgets, pd.DataFrame(), pd.DataFrame())
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{START}\nold\n{END}\n\nrest\n")
    assert update_readme(readme, table) and not update_readme(readme, table)
    assert readme_block(readme) == table and readme.read_text().endswith("rest\n")
    assert "| teacher | default | 0.712 | [0.700, 0.720] | 5 | one budget | baseline |" in table
    readme.write_text(readme.read_text().replace("0.712", "0.750"))
    assert readme_block(readme) != table


def test_missing_markers_are_a_clear_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="headline markers missing"):
        update_readme(readme, "| t |\n")


def test_how_a_run_flows_names_files_that_exist():
    """The README's walk through one run names real files, in the order a run passes them."""
    import re

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## How a run flows") :]
    section = section[: section.index("\n## ", 3)] if "\n## " in section[3:] else section
    paths = re.findall(r"`((?:src|stages)/[\w/.]+)`", section)
    assert len(paths) >= 8
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"README's 'How a run flows' names files that do not exist: {missing}"
    hops = ["entry.py", "runner.py", "study.py", "engine.py"]
    order = [Path(p).name for p in paths if Path(p).name in hops]
    assert order == sorted(order, key=hops.index) and set(order) == set(hops)
