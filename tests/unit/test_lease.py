"""Fencing on the resource side (pure): a stale holder's token is refused."""

from __future__ import annotations

import pytest

from libs.lease import Fence, StaleFencingToken, lease_key


def test_fence_when_newer_token_seen_then_older_refused_and_equal_or_newer_admitted() -> None:
    fence = Fence()
    fence.admit(5)
    fence.admit(5)  # the same holder writes again with its current token
    fence.admit(9)  # a renewal or a new holder
    with pytest.raises(StaleFencingToken):
        fence.admit(7)
    assert fence.highest == 9


def test_lease_key_when_named_then_kv_key_under_lease_prefix() -> None:
    assert lease_key("position") == "lease.position"
