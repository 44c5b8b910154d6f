"""One whole system for the e2e tests, started exactly as a user does: `bulwark up` in a subprocess,
its traces exported to a collector of the test's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from entrypoints.harness.system import RunningSystem, start_system, stop_system
from tests.e2e.observe import Collector


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    """Where the system's services export their traces (OTLP/HTTP)."""
    running = Collector()
    yield running
    running.close()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, collector: Collector) -> Iterator[RunningSystem]:
    base = tmp_path_factory.mktemp("system")
    env = {"BULWARK_OTEL_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    running = start_system(base / "data", base / "bulwark-up.log", env=env)
    try:
        running.wait_all_ready()
        yield running
    finally:
        stop_system(running)


__all__ = ["RunningSystem", "start_system", "stop_system"]
