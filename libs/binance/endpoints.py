"""Primary and alternate endpoints of one venue (SPEC FM-N3/N4, FM-N6's configured backup).

Every venue client that can reach the venue by more than one base URL (market-data's streams,
the position service's user-data stream) rotates through them the same way: stay on one while
it works, move on when it fails, and say when all of them have failed in a row (alert then).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["EndpointRotation"]


class EndpointRotation:
    """Primary and alternate endpoints: stay on one while it works, move on when it fails."""

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ValueError("at least one endpoint is needed")
        self.urls = tuple(urls)
        self.index = 0
        self.failures_in_row = 0

    @property
    def current(self) -> str:
        return self.urls[self.index]

    def on_success(self) -> None:
        """The current endpoint worked: it is the last good one."""
        self.failures_in_row = 0

    def on_failure(self) -> bool:
        """The current endpoint failed; move to the next. True when every endpoint has now failed in a row."""
        self.failures_in_row += 1
        self.index = (self.index + 1) % len(self.urls)
        return self.failures_in_row % len(self.urls) == 0
