"""The venue preflight's checks: each one's pass and fail, with the message an operator acts on."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from libs.binance.errors import VenueError, VenueUnreachable
from libs.binance.preflight import (
    PreflightConfig,
    check_account,
    check_api_key_error,
    check_balance,
    check_leverage,
    check_margin_type,
    check_multi_assets,
    check_position_mode,
    check_rate_limits,
    check_server_time,
    check_symbol,
    parse_leverage,
    run_preflight,
)

INFO = {
    "rateLimits": [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
        {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
    ],
    "symbols": [
        {"symbol": "BTCUSDT", "status": "TRADING"},
        {"symbol": "ETHUSDT", "status": "TRADING"},
        {"symbol": "OLDUSDT", "status": "SETTLING"},
    ],
}
ACCOUNT = {
    "canTrade": True,
    "canWithdraw": False,
    "availableBalance": "1000.5",
    "assets": [{"asset": "USDT", "availableBalance": "1000.5"}],
}


def test_check_server_time_when_within_1s_then_ok_and_when_over_5s_then_fails_naming_the_fix() -> None:
    assert check_server_time(-250).ok and not check_server_time(-250).warning
    warned = check_server_time(1500)
    assert warned.ok and warned.warning
    failed = check_server_time(-6000)
    assert not failed.ok
    assert "-6000 ms" in failed.message and "synchronise" in failed.message


def test_check_account_when_trading_disabled_then_fails_and_when_withdrawals_allowed_then_warns() -> None:
    assert check_account(ACCOUNT).ok and not check_account(ACCOUNT).warning
    refused = check_account({**ACCOUNT, "canTrade": False})
    assert not refused.ok and "Enable Futures" in refused.message
    withdraws = check_account({**ACCOUNT, "canWithdraw": True})
    assert withdraws.ok and withdraws.warning and "WITHDRAW" in withdraws.message


def test_check_api_key_error_when_key_rejected_then_names_the_settings_to_check() -> None:
    check = check_api_key_error(VenueError(401, -2015, "Invalid API-key, IP, or permissions for action."))
    assert check.name == "api_key" and not check.ok
    assert "-2015" in check.message and "BULWARK_VENUE_API_KEY" in check.message


def test_check_position_mode_when_hedge_then_fails_with_the_exact_call_that_changes_it() -> None:
    assert check_position_mode({"dualSidePosition": False}).ok
    hedge = check_position_mode({"dualSidePosition": True})
    assert not hedge.ok
    assert "POST /fapi/v1/positionSide/dual dualSidePosition=false" in hedge.message
    assert not check_position_mode({}).ok


def test_check_multi_assets_when_not_as_configured_then_fails() -> None:
    assert check_multi_assets({"multiAssetsMargin": False}, expected=False).ok
    wrong = check_multi_assets({"multiAssetsMargin": True}, expected=False)
    assert not wrong.ok and "multiAssetsMargin=false" in wrong.message
    assert not check_multi_assets({"multiAssetsMargin": "yes"}, expected=False).ok


def test_check_symbol_when_unknown_or_not_trading_then_fails() -> None:
    assert check_symbol("BTCUSDT", INFO).ok
    unknown = check_symbol("DOGEUSDT", INFO)
    assert not unknown.ok and "not listed" in unknown.message and unknown.name == "symbol.DOGEUSDT"
    halted = check_symbol("OLDUSDT", INFO)
    assert not halted.ok and "SETTLING" in halted.message


def test_check_leverage_when_refused_or_answered_otherwise_then_fails() -> None:
    assert check_leverage("BTCUSDT", 5, {"symbol": "BTCUSDT", "leverage": 5}).ok
    assert not check_leverage("BTCUSDT", 5, {"symbol": "BTCUSDT", "leverage": 20}).ok
    refused = check_leverage("BTCUSDT", 200, VenueError(400, -4028, "Leverage 200 is not valid"))
    assert not refused.ok and "-4028" in refused.message


def test_check_margin_type_when_no_need_to_change_then_ok_and_when_refused_then_fails() -> None:
    assert check_margin_type("BTCUSDT", "CROSSED", {"code": 200, "msg": "success"}).ok
    assert check_margin_type("BTCUSDT", "CROSSED", VenueError(400, -4046, "No need to change margin type.")).ok
    refused = check_margin_type("BTCUSDT", "ISOLATED", VenueError(400, -4048, "Margin type cannot be changed"))
    assert not refused.ok and "-4048" in refused.message


def test_check_balance_when_zero_or_below_minimum_then_fails() -> None:
    assert check_balance(ACCOUNT, "USDT", Decimal(0)).ok
    assert not check_balance({**ACCOUNT, "assets": [{"asset": "USDT", "availableBalance": "0"}]}, "USDT", Decimal(0)).ok
    low = check_balance(ACCOUNT, "USDT", Decimal(5000))
    assert not low.ok and "5000" in low.message and "transfer" in low.message
    assert not check_balance({"assets": [{"asset": "USDT", "availableBalance": "abc"}]}, "USDT", Decimal(0)).ok


def test_check_rate_limits_when_listed_then_loaded_and_when_absent_then_warns() -> None:
    check, limits = check_rate_limits(INFO)
    assert check.ok and limits is not None
    assert (limits.weight_limit_1m, limits.order_limit_10s, limits.order_limit_1m) == (2400, 300, 1200)
    check, limits = check_rate_limits({})
    assert check.ok and check.warning and limits is None
    account = [{"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100}]
    check, limits = check_rate_limits(INFO, account)
    assert limits is not None and (limits.order_limit_10s, limits.order_limit_1m) == (100, 1200)
    assert "account's own order limits applied" in check.message
    check, limits = check_rate_limits(INFO, VenueError(404, -5000, "GET /fapi/v1/rateLimit/order is invalid."))
    assert check.ok and limits is not None and limits.order_limit_10s == 300 and "not available" in check.message


def test_parse_leverage_when_default_and_overrides_then_per_symbol_and_when_bad_then_raises() -> None:
    assert parse_leverage("", ("BTCUSDT",)) == {}
    assert parse_leverage("5", ("BTCUSDT", "ETHUSDT")) == {"BTCUSDT": 5, "ETHUSDT": 5}
    assert parse_leverage("*=3,btcusdt=10", ("BTCUSDT", "ETHUSDT")) == {"BTCUSDT": 10, "ETHUSDT": 3}
    with pytest.raises(ValueError, match="whole number"):
        parse_leverage("BTCUSDT=x", ("BTCUSDT",))
    with pytest.raises(ValueError, match="1 to 125"):
        parse_leverage("500", ("BTCUSDT",))


class FakeVenue:
    """A venue port answering from dicts; an exception instead of an answer is raised."""

    def __init__(self, **answers: Any) -> None:
        self.answers: dict[str, Any] = {
            "server_time_ms": 1_000_000,
            "account": ACCOUNT,
            "position_mode": {"dualSidePosition": False},
            "multi_assets_mode": {"multiAssetsMargin": False},
            "exchange_info": INFO,
            **answers,
        }
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def _answer(self, name: str, *args: Any) -> Any:
        self.calls.append((name, args))
        answer = self.answers.get(name)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def server_time_ms(self) -> int:
        return int(await self._answer("server_time_ms"))

    async def exchange_info(self) -> dict:
        return dict(await self._answer("exchange_info"))

    async def account(self) -> dict:
        return dict(await self._answer("account"))

    async def position_mode(self) -> dict:
        return dict(await self._answer("position_mode"))

    async def multi_assets_mode(self) -> dict:
        return dict(await self._answer("multi_assets_mode"))

    async def set_leverage(self, symbol: str, leverage: int) -> dict:
        await self._answer("set_leverage", symbol, leverage)
        return {"symbol": symbol, "leverage": leverage}

    async def set_margin_type(self, symbol: str, margin_type: str) -> dict:
        answer = await self._answer("set_margin_type", symbol, margin_type)
        return dict(answer or {"code": 200})

    async def order_rate_limits(self) -> list[dict]:
        return list(await self._answer("order_rate_limits") or [])


def _run(venue: FakeVenue, config: PreflightConfig) -> Any:
    return asyncio.run(run_preflight(venue, config, lambda: 1_000_000 * 1_000_000))


def test_run_preflight_when_account_as_configured_then_every_check_passes_and_leverage_is_set() -> None:
    venue = FakeVenue()
    report = _run(venue, PreflightConfig(symbols=("BTCUSDT", "ETHUSDT"), leverage={"BTCUSDT": 5}))
    assert report.ok, report.reason()
    names = [check.name for check in report.checks]
    assert names == [
        "server_time",
        "api_key",
        "position_mode",
        "multi_assets_mode",
        "symbol.BTCUSDT",
        "leverage.BTCUSDT",
        "margin_type.BTCUSDT",
        "symbol.ETHUSDT",
        "margin_type.ETHUSDT",
        "balance",
        "rate_limits",
    ]
    assert ("set_leverage", ("BTCUSDT", 5)) in venue.calls
    assert ("set_margin_type", ("ETHUSDT", "CROSSED")) in venue.calls
    assert report.limits is not None and report.limits.order_limit_10s == 300


def test_run_preflight_when_hedge_mode_and_unknown_symbol_then_fails_naming_both() -> None:
    venue = FakeVenue(position_mode={"dualSidePosition": True})
    report = _run(venue, PreflightConfig(symbols=("BTCUSDT", "DOGEUSDT")))
    assert report.reachable and not report.ok
    assert {check.name for check in report.failures()} == {"position_mode", "symbol.DOGEUSDT"}
    assert "position_mode:" in report.reason() and "symbol.DOGEUSDT:" in report.reason()
    # An unknown symbol gets no leverage or margin call.
    assert not [call for call in venue.calls if call[1][:1] == ("DOGEUSDT",)]


def test_run_preflight_when_key_rejected_then_one_api_key_failure_and_no_signed_call_after() -> None:
    venue = FakeVenue(account=VenueError(401, -2015, "Invalid API-key, IP, or permissions for action."))
    report = _run(venue, PreflightConfig(symbols=("BTCUSDT",)))
    assert report.reachable and not report.ok
    assert [check.name for check in report.failures()] == ["api_key"]
    assert [name for name, _ in venue.calls] == ["server_time_ms", "account"]


def test_run_preflight_when_venue_unreachable_or_banned_then_incomplete_not_a_verdict() -> None:
    down = _run(FakeVenue(server_time_ms=VenueUnreachable("refused")), PreflightConfig(symbols=("BTCUSDT",)))
    assert not down.reachable and not down.ok and "refused" in down.reason()
    banned = _run(FakeVenue(position_mode=VenueError(418, -1003, "banned")), PreflightConfig(symbols=("BTCUSDT",)))
    assert not banned.reachable


def test_check_profile_when_mainnet_url_under_another_profile_then_configuration_fails() -> None:
    from libs.binance.preflight import check_profile

    refused = check_profile("sim", "https://fapi.binance.com")
    assert refused is not None and not refused.ok and "BULWARK_VENUE_PROFILE=binance" in refused.message
    assert check_profile("binance", "https://fapi.binance.com/") is None
    assert check_profile("binance-testnet", "https://testnet.binancefuture.com") is None
    assert check_profile("sim", "http://127.0.0.1:8100") is None
