"""A venue outside the system for end-to-end tests: a simulator started on its own with an account's
key (the `venue` fixture, one per test module), and `bulwark up --venue custom` trading it (live, or
on paper with `--paper`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from entrypoints.harness.system import RunningSystem, start_system, stop_system
from entrypoints.harness.venue import running_venue_sim

KEY, SECRET = f"venue-key-{uuid.uuid4().hex}", f"venue-secret-{uuid.uuid4().hex}"
"""The account's key at the venue: unique per test run, so a test can look for it in logs and files."""
ACCOUNT_ENV = {"BULWARK_VENUE_API_KEY": KEY, "BULWARK_VENUE_API_SECRET": SECRET}
"""The key as a user trading the venue has it in the environment."""


@pytest.fixture(scope="module", name="venue")
def venue_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The venue: a simulator of its own (synthetic market) accepting the account's key; its REST URL."""
    with running_venue_sim(tmp_path_factory.mktemp("venue"), "--source", "synthetic", env=ACCOUNT_ENV) as url:
        yield url


@contextmanager
def system_on_venue(
    base: Path, venue_url: str, extra_args: list[str], env: dict[str, str] | None = None
) -> Iterator[RunningSystem]:
    """`bulwark up --venue custom` with `venue_url` as its REST and WebSocket base, every component READY."""
    ws = venue_url.replace("http://", "ws://")
    args = ["--venue", "custom", "--venue-rest-url", venue_url, "--venue-ws-url", ws, *extra_args]
    running = start_system(base / "data", base / "bulwark-up.log", args, env=env)
    try:
        running.wait_all_ready()
        yield running
    finally:
        stop_system(running)
