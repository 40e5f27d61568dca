"""The README is a short front page into docs/: its links must land, and its quick start must match the docs'.

mkdocs build --strict checks the links inside docs/ only; the README is read on the repository's page.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def test_every_relative_link_of_the_readme_lands_on_a_file_and_heading():
    broken = []
    for target in LINK.findall(README):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        page = ROOT / path
        if not page.is_file():
            broken.append(target)
        elif anchor and anchor not in _anchors(page):
            broken.append(target)
    assert not broken, f"README links that land nowhere: {broken}"


def test_the_readme_links_every_section_of_the_docs():
    linked = {target.partition("#")[0] for target in LINK.findall(README)}
    sections = {"docs/getting-started.md", "docs/production/index.md",
                "docs/reference/settings.md", "docs/reference/cli.md", "docs/reference/api.md",
                "docs/discussions/guarantees.md", "docs/discussions/design.md", "docs/discussions/performance.md"}
    how_to = {f"docs/how-to/{p.name}" for p in (ROOT / "docs/how-to").glob("*.md") if p.name != "index.md"}
    missing = sorted((sections | how_to) - linked)
    assert not missing, f"docs pages the README does not link: {missing}"


def test_the_readme_quick_start_is_the_one_getting_started_explains():
    def shop(text: str) -> str:
        return next(block for block in FENCE.findall(text) if "# shop.py" in block)

    assert shop(README) == shop((ROOT / "docs/getting-started.md").read_text(encoding="utf-8"))


def test_the_readme_keeps_the_two_commands_ci_runs():
    lines = README.splitlines()
    setup = "python3 -m venv .venv && . .venv/bin/activate && python -m pip install -e '.[dev]'"
    assert f"{setup} && python examples/checkout_demo.py" in lines
    assert f"{setup} && python -m pytest -q" in lines
