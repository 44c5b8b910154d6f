"""The fuzz runs use the e2e tests' whole system (`bulwark up`), one per module."""

from tests.e2e.conftest import collector, system  # noqa: F401
