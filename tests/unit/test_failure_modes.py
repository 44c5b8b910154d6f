"""Every failure-mode ID and catalogue section cited in the repository resolves in
`docs/FAILURE_MODES.md`, the project's own catalogue (no reference points outside the checkout)."""

from __future__ import annotations

import io
import json
import re

from libs.logging import configure, get_logger
from tests.support.repository import ROOT, project_files

CATALOGUE = ROOT / "docs" / "FAILURE_MODES.md"
CITED_ID = re.compile(r"\b(FM-[A-Z]+[0-9]+|CB-[0-9]+)\b")
CITED_SECTION = re.compile(r"§ ?([0-9]+)")
ID_HEADING = re.compile(r"^### (FM-[A-Z]+[0-9]+|CB-[0-9]+) — \S", re.MULTILINE)
SECTION_HEADING = re.compile(r"^## §([0-9]+) \S", re.MULTILINE)
UNKNOWN_ON_PURPOSE = {"CB-9"}
"""IDs the tests use as an example of a breaker that does not exist (answered 404 / unknown)."""


def _citations(pattern: re.Pattern[str]) -> dict[str, set[str]]:
    cited: dict[str, set[str]] = {}
    for path in project_files():
        if path == CATALOGUE:
            continue
        for found in pattern.findall(path.read_text(errors="replace")):
            cited.setdefault(found, set()).add(str(path.relative_to(ROOT)))
    return cited


def test_catalogue_when_an_id_is_cited_anywhere_then_it_has_its_own_heading() -> None:
    text = CATALOGUE.read_text()
    headings = ID_HEADING.findall(text)
    assert len(headings) == len(set(headings)), "an ID has two headings"
    cited = _citations(CITED_ID)
    assert {"FM-N1", "FM-D1", "FM-C1", "CB-1"} <= cited.keys()  # the scan sees the code's citations
    unresolved = {
        identifier: sorted(where)
        for identifier, where in cited.items()
        if identifier not in set(headings) | UNKNOWN_ON_PURPOSE
    }
    assert unresolved == {}
    assert not UNKNOWN_ON_PURPOSE & set(headings)
    assert all(where.startswith("tests/") for identifier in UNKNOWN_ON_PURPOSE for where in cited.get(identifier, ()))


def test_catalogue_when_a_section_is_cited_anywhere_then_it_has_that_numbered_section() -> None:
    sections = SECTION_HEADING.findall(CATALOGUE.read_text())
    cited = _citations(CITED_SECTION)
    assert {"4", "6", "8"} <= cited.keys()
    assert {number: sorted(where) for number, where in cited.items() if number not in sections} == {}


def test_catalogue_when_read_then_each_entry_states_every_part() -> None:
    text = CATALOGUE.read_text()
    entries = re.split(r"^### ", text, flags=re.MULTILINE)[1:]
    parts = ("**Goes wrong:**", "**Detected:**", "**Answer:**", "**Recovery:**", "**Verified:**", "**Code:**")
    incomplete = [
        entry.split("\n", 1)[0]
        for entry in entries
        if CITED_ID.match(entry) and not all(part in entry for part in parts)
    ]
    assert incomplete == []


def test_readme_when_naming_the_catalogue_then_links_the_document_in_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "](docs/FAILURE_MODES.md)" in readme
    assert "SPEC.md" not in readme


def test_logging_when_details_carry_a_secret_then_the_line_masks_it() -> None:
    """FM-C10: a venue secret never reaches a log line, however it is nested."""
    stream = io.StringIO()
    configure("INFO", stream)
    try:
        get_logger("test").info("venue_configured", api_secret="s3cr3t", venue={"api_key": "k3y", "name": "binance"})
    finally:
        configure("INFO", None)
    line = json.loads(stream.getvalue())
    assert "s3cr3t" not in stream.getvalue() and "k3y" not in stream.getvalue()
    assert line["details"]["venue"]["name"] == "binance"
