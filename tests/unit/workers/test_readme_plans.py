"""The plans table in workers/README.md is what the planner computes today."""

from __future__ import annotations

from pathlib import Path

from workers.plan_table import BEGIN, END, plans_markdown

README = Path(__file__).resolve().parents[3] / "workers" / "README.md"


def test_readme_table_matches_the_planner() -> None:
    text = README.read_text()
    documented = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert documented == plans_markdown(), "regenerate with: python -m workers.plan_table"
