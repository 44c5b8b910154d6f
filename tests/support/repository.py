"""The repository's own text files, for tests that check what the code and documents cite."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIPPED_DIRS = {".git", ".venv", "venv", "data", "build", "dist", ".bulwark", "node_modules"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".cfg", ".ini", ".txt", ".sh", ".json", ""}


def project_files() -> list[Path]:
    """Every text file of the checkout that the project wrote: code, tests, docs, build and deploy
    files. Skips the shipped third-party data, virtualenvs, tool caches and build output."""
    found = []
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT)
        if any(part in SKIPPED_DIRS or part.endswith(("_cache", ".egg-info")) for part in relative.parts[:-1]):
            continue
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name in {"Makefile", "Dockerfile"}):
            found.append(path)
    return found
