"""The built wheel (what the Docker image installs) is the runtime only: no test code, no test-only
dependencies, a licence setuptools still accepts, and the `bulwark` command in the top layer."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = {"proto", "libs", "services", "entrypoints"}
NOT_SOURCES = (".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".bulwark*")
TEST_ONLY_DEPENDENCIES = ("pytest", "hypothesis", "testcontainers", "docker", "ruff", "mypy", "import-linter")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[zipfile.ZipFile, str]:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources it builds.
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (path,) = out.glob("bulwark-*.whl")
    return zipfile.ZipFile(path), build.stdout + build.stderr


def _metadata(archive: zipfile.ZipFile, name: str) -> str:
    (member,) = [item for item in archive.namelist() if item.endswith(f".dist-info/{name}")]
    return archive.read(member).decode()


def test_wheel_when_built_then_holds_only_runtime_packages_and_no_test_code(wheel: tuple[zipfile.ZipFile, str]) -> None:
    archive, _ = wheel
    names = [name for name in archive.namelist() if ".dist-info/" not in name]
    assert {name.split("/", 1)[0] for name in names} == RUNTIME_PACKAGES
    assert not [name for name in names if "/testing/" in name or "/support/" in name or "conftest" in name]
    importing_test_tools = [
        name
        for name in names
        if name.endswith(".py")
        and any(
            line.strip().startswith(("import pytest", "from pytest", "import hypothesis", "from hypothesis"))
            for line in archive.read(name).decode().splitlines()
        )
    ]
    assert importing_test_tools == []


def test_wheel_when_built_then_no_packaging_deprecation_and_an_spdx_licence(wheel: tuple[zipfile.ZipFile, str]) -> None:
    archive, output = wheel
    assert "deprecated" not in output.lower(), output
    metadata = email.message_from_string(_metadata(archive, "METADATA"))
    assert metadata["License-Expression"] == "LicenseRef-Proprietary"
    assert [name for name in archive.namelist() if name.endswith(".dist-info/licenses/LICENSE")]
    unconditional = [
        requirement
        for requirement in metadata.get_all("Requires-Dist") or []
        if "extra ==" not in requirement
        and requirement.split(">", 1)[0].split("=", 1)[0].strip() in TEST_ONLY_DEPENDENCIES
    ]
    assert unconditional == []


def test_wheel_when_installed_then_bulwark_command_is_the_entry_point_cli(wheel: tuple[zipfile.ZipFile, str]) -> None:
    archive, _ = wheel
    assert "bulwark = entrypoints.cli:main" in _metadata(archive, "entry_points.txt")
