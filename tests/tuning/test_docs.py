"""The user's guide matches the code: every experiment key in docs/experiments.md's table, with its default, and links that resolve."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from carclf.config import RUN_SECTIONS
from tuning.experiment import SEARCH_SECTIONS

ROOT = Path(__file__).resolve().parents[2]
KEY_ROW = re.compile(r"^\| `(\w+)\.(\w+)` \| (.+?) \| .+ \|$")
UNWRITTEN = ("required", "none")  # tables of their own: [search.space], [[search.start]]


def documented_keys() -> dict[str, str]:
    """`section.key` -> its default cell, from the table's rows."""
    text = (ROOT / "docs" / "experiments.md").read_text(encoding="utf-8")
    rows = [match.groups() for line in text.splitlines() if (match := KEY_ROW.match(line))]
    return {f"{section}.{key}": default for section, key, default in rows}


def code_defaults() -> dict[str, object]:
    defaults = {}
    for section, cls in {**RUN_SECTIONS, **SEARCH_SECTIONS}.items():
        for field in dataclasses.fields(cls):
            defaults[f"{section}.{field.name}"] = field.default
    return defaults


def test_the_keys_table_lists_exactly_the_keys_the_code_accepts_with_their_defaults():
    documented, defaults = documented_keys(), code_defaults()
    assert sorted(documented) == sorted(defaults)
    for key, cell in documented.items():
        if cell in UNWRITTEN:
            assert key in ("search.space", "search.start")
            continue
        assert tomllib.loads(f"value = {cell.strip('`')}")["value"] == defaults[key], key


def test_every_relative_link_of_the_guide_resolves():
    guides = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    for guide in guides:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", guide.read_text(encoding="utf-8")):
            assert (guide.parent / target).exists(), f"{guide.name} links to {target}, which is not there"
