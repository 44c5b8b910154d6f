"""Shared fixtures: real embedded nats-server, Postgres and Valkey (never mocks)."""

from pathlib import Path

import pytest

from tests.support.fixtures import infra, nats_url, pg_pool, redis_client  # noqa: F401

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real Binance recordings shipped in `data/`; a missing folder is an error, not a skip."""
    assert DATA_DIR.is_dir(), f"recordings not found at {DATA_DIR}"
    return DATA_DIR
