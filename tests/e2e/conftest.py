"""One whole system for the e2e tests, started exactly as a user does: `bulwark up` in a subprocess."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from entrypoints.harness.system import RunningSystem, start_system, stop_system


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    base = tmp_path_factory.mktemp("system")
    running = start_system(base / "data", base / "bulwark-up.log")
    try:
        running.wait_all_ready()
        yield running
    finally:
        stop_system(running)


__all__ = ["RunningSystem", "start_system", "stop_system"]
