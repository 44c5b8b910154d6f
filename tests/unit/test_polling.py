"""`tests.support.polling.eventually`: the value once the check holds, a useful message when it never does."""

from __future__ import annotations

import pytest

from tests.support.polling import eventually


async def test_eventually_when_check_holds_later_then_its_value() -> None:
    calls = 0

    async def check() -> int | None:
        nonlocal calls
        calls += 1
        return calls if calls >= 3 else None

    assert await eventually(check, 5.0) == 3


async def test_eventually_when_never_holds_then_failure_message_read_at_the_deadline() -> None:
    seen = []

    async def check() -> bool:
        seen.append(len(seen))
        return False

    async def failure() -> str:
        return f"still false after {len(seen)} checks"

    with pytest.raises(AssertionError, match=r"still false after \d+ checks"):
        await eventually(check, 0.3, failure)
    assert len(seen) >= 2


async def test_eventually_when_never_holds_without_failure_then_default_message() -> None:
    async def check() -> bool:
        return False

    with pytest.raises(AssertionError, match="condition not reached in time"):
        await eventually(check, 0.2)


async def test_eventually_when_plain_check_and_plain_failure_then_same_contract() -> None:
    flags = iter([False, False, True])
    assert await eventually(lambda: next(flags), 5.0, interval_s=0.01) is True
    with pytest.raises(AssertionError, match="never"):
        await eventually(lambda: 0, 0.05, lambda: "never", interval_s=0.01)
