"""The repository is self-contained: a clone alone replays the real recordings and runs its tests.

Nothing (code, Makefile, tests, docs) reads a folder beside the checkout; the recordings the default
replay and the tests use ship under `data/`, each source with its licence notice; every relative
link in the Markdown documents resolves inside the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

from libs.recordings import DEFAULT_RECORDINGS, RECORDINGS_DIR, default_recordings, project_root
from services.venue_sim.config import SimConfig
from services.venue_sim.main import build_source
from tests.support.repository import ROOT, project_files

# Any path that leaves the checkout for the old sibling folder, however it is spelled.
OUTSIDE = re.compile(r"\.\./shared\b|/work/shared\b|[\"']shared[\"']\s*/|\bshared/(data|SPEC\.md|STYLE\.md)\b")
MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_repository_when_scanned_then_nothing_reads_a_folder_beside_the_checkout() -> None:
    files = project_files()
    assert ROOT / "Makefile" in files and ROOT / "tests" / "conftest.py" in files  # the scan sees what matters
    offending = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offending == []


def test_recordings_when_listed_then_every_file_is_inside_the_repository_with_its_licence() -> None:
    assert project_root() == ROOT
    assert RECORDINGS_DIR.resolve().is_relative_to(ROOT)
    assert [path.name for path in default_recordings()] == list(DEFAULT_RECORDINGS)
    assert all(path.is_file() and path.resolve().is_relative_to(ROOT) for path in default_recordings())
    assert "MIT License" in (RECORDINGS_DIR / "LICENSE.hftbacktest").read_text()
    assert "Bryant Moscon" in (RECORDINGS_DIR / "cryptofeed" / "LICENSE.cryptofeed").read_text()
    readme = (ROOT / "data" / "README.md").read_text()
    shipped = [
        path
        for path in (ROOT / "data").rglob("*")
        if path.is_file() and not path.name.startswith(("LICENSE", "README"))
    ]
    assert shipped
    assert [path.name for path in shipped if path.name not in readme] == []  # every file's source is stated


def test_simulator_when_given_no_source_then_replays_the_recordings_in_the_repository() -> None:
    source, description = build_source(SimConfig(source=""))
    assert description == "replay:" + ",".join(str(path) for path in default_recordings())
    assert set(source.symbols) == {"BTCUSDT", "ETHUSDT"}


def test_markdown_when_linking_a_relative_path_then_it_resolves_inside_the_repository() -> None:
    broken = []
    for document in (path for path in project_files() if path.suffix == ".md"):
        for target in MARKDOWN_LINK.findall(document.read_text()):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            resolved = (document.parent / target).resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                broken.append(f"{document.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_docker_build_context_when_read_then_leaves_the_recordings_out() -> None:
    """The image runs a synthetic market unless a recording is mounted, so it does not carry `data/`
    (the wheel holds only the runtime packages, `tests/deploy/test_wheel.py`)."""
    assert "data" in (ROOT / ".dockerignore").read_text().split()
