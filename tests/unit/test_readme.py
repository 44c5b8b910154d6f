"""The README's configuration table is the settings' own documentation, so they cannot drift."""

from __future__ import annotations

from pathlib import Path

from libs.settings import Settings, settings_doc

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_when_settings_change_then_table_lists_every_variable_with_its_default() -> None:
    text = README.read_text()
    table = text[text.index("<!-- settings-table:start -->") : text.index("<!-- settings-table:end -->")]
    for variable, default, meaning in settings_doc():
        shown = f"`{default}`" if default else "(empty)"
        assert f"| `{variable}` | {shown} | {meaning} |" in table, variable
    assert table.count("| `BULWARK_") == len(Settings.__dataclass_fields__)


def test_readme_when_read_then_gives_the_two_commands() -> None:
    text = README.read_text()
    assert "make run" in text and "make test" in text
