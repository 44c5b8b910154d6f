"""Export the JSON Schema of every message, KV value and request/reply body into `proto/schemas/`
(`python -m proto.schemas_export`).

The checked-in schemas are the reviewed contract: a test fails when they differ from the structs.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from proto.kv import KV_VALUE_TYPES
from proto.messages import ALL_MESSAGE_TYPES, HotStateRecord, OrderView, SymbolHotState, SymbolsReply
from proto.replies import REQUEST_REPLY_TYPES

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


def _clean_descriptions(node: Any) -> Any:
    """Docstrings as `inspect.cleandoc` leaves them, whichever msgspec release rendered them.

    msgspec 0.23 started to dedent docstrings itself; cleaning them here keeps the checked-in
    contract independent of the msgspec release installed.
    """
    if isinstance(node, dict):
        cleaned = {key: _clean_descriptions(value) for key, value in node.items()}
        if isinstance(cleaned.get("description"), str):
            cleaned["description"] = inspect.cleandoc(cleaned["description"])
        return cleaned
    if isinstance(node, list):
        return [_clean_descriptions(item) for item in node]
    return node


def render() -> dict[str, str]:
    """File name -> JSON text of every schema (one file per message, KV value and request/reply body)."""
    kinds: tuple[type[msgspec.Struct], ...] = (
        *ALL_MESSAGE_TYPES,
        OrderView,
        SymbolHotState,
        HotStateRecord,
        SymbolsReply,
        *KV_VALUE_TYPES,
        *REQUEST_REPLY_TYPES,
    )
    files: dict[str, str] = {}
    for kind in kinds:
        # Each file holds only the definitions its type reaches: a change shows in the files it touches.
        name = kind.__name__
        document = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": name}
        document.update(msgspec.json.schema(kind))
        document = _clean_descriptions(document)
        files[f"{name}.json"] = json.dumps(document, indent=2, sort_keys=True) + "\n"
    return files


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    files = render()
    for stale in SCHEMA_DIR.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        (SCHEMA_DIR / name).write_text(text)
    sys.stdout.write(f"wrote {len(files)} schemas to {SCHEMA_DIR}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
