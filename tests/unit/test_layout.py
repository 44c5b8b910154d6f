"""The layout stays one a newcomer can read: small service modules that say what they own, all of
them on the map in docs/ARCHITECTURE.md. (Import directions are checked by `lint-imports`.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_SERVICE_MODULE_LINES = 600
SERVICE_MODULES = sorted(path for path in (ROOT / "services").rglob("*.py") if path.name != "__init__.py")
SHIPPED_MODULES = sorted(
    path
    for package in ("proto", "libs", "services", "entrypoints")
    for path in (ROOT / package).rglob("*.py")
    if path.name != "__init__.py"
)


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("path", SERVICE_MODULES, ids=_name)
def test_service_module_when_read_then_at_most_600_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_SERVICE_MODULE_LINES


@pytest.mark.parametrize("path", SHIPPED_MODULES, ids=_name)
def test_shipped_module_when_read_then_starts_with_a_docstring(path: Path) -> None:
    assert ast.get_docstring(ast.parse(path.read_text())), "a module docstring says what the module owns"


def test_architecture_map_when_read_then_names_every_service_module_and_no_missing_one() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    unnamed = [
        _name(path) for path in SERVICE_MODULES if f"`{path.relative_to(ROOT / 'services').as_posix()}`" not in text
    ]
    assert unnamed == [], "add them to the service's table in docs/ARCHITECTURE.md"
    tokens = (token.rstrip(",.;:)") for token in text.split())
    named = {token.strip("`") for token in tokens if token.startswith("`") and token.endswith(".py`") and "/" in token}
    gone = sorted(name for name in named if not (ROOT / "services" / name).exists() and not (ROOT / name).exists())
    assert gone == [], "docs/ARCHITECTURE.md names modules that no longer exist"
