"""Venue preflight: is this Binance USD-M account set up the way Bulwark trades?

Run before any order, at every start and every reconnect of the order link (services/position/
preflight.py runs it and acts on it). Each check answers with a name, ok or not, and a message
that says what was found and, when not ok, exactly how to fix it:

| check | passes when |
|---|---|
| `server_time` | the local clock is within 5 s of the venue's (SPEC FM-D3; a warning above 1 s) |
| `api_key` | the key is accepted and may trade futures (`canTrade`; a warning if it may withdraw) |
| `position_mode` | one-way mode (`dualSidePosition=false`); hedge mode is refused |
| `multi_assets_mode` | the account's multi-assets mode is the configured one |
| `symbol.<S>` | every configured symbol is on the venue and `TRADING` |
| `leverage.<S>`, `margin_type.<S>` | the configured leverage and margin type were SET (-4046 is ok) |
| `balance` | the available balance of the margin asset is above zero and the configured minimum |
| `rate_limits` | never fails: the venue's `rateLimits` and the account's order limits replace the budget's (FM-N2) |

The check functions are pure (answers in, `PreflightCheckValue` out); `run_preflight` asks the
venue through a `PreflightVenue` port (`BinanceRestClient` is one) and collects them. A venue that
cannot be reached at all (nothing definite answered) ends the run as `reachable=False`: that is
an outage, for the caller to retry, not a verdict on the account.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol
from urllib.parse import urlsplit

from libs.binance.errors import VenueError, VenueTimeout, VenueUnreachable
from proto.kv import PreflightCheckValue

__all__ = [
    "NO_NEED_TO_CHANGE_MARGIN_TYPE",
    "PreflightConfig",
    "PreflightReport",
    "PreflightVenue",
    "VenueLimits",
    "check_account",
    "check_balance",
    "check_leverage",
    "check_margin_type",
    "check_multi_assets",
    "check_position_mode",
    "check_rate_limits",
    "check_server_time",
    "check_symbol",
    "parse_leverage",
    "run_preflight",
]

NO_NEED_TO_CHANGE_MARGIN_TYPE = -4046
"""Binance's answer to setting the margin type a symbol already has: fine for a preflight."""
CLOCK_WARN_MS = 1000
CLOCK_FAIL_MS = 5000
"""SPEC FM-D3: more than 1 s off alerts, more than 5 s halts trading."""
_AUTH_CODES = frozenset({-2014, -2015, -2008, -1022})
"""API-key format invalid, key/IP/permissions rejected, invalid key id, invalid signature."""
_NS_PER_MS = 1_000_000

REAL_MONEY_PROFILE = "binance"
PROFILE_URLS: dict[str, tuple[str, str]] = {
    "binance-testnet": ("https://testnet.binancefuture.com", "wss://fstream.binancefuture.com"),
    REAL_MONEY_PROFILE: ("https://fapi.binance.com", "wss://fstream.binance.com"),
}
"""REST and market-stream bases of the Binance USD-M venue profiles (`bulwark up --venue`)."""


class PreflightVenue(Protocol):
    """What a preflight asks of the venue (`BinanceRestClient` has these methods)."""

    async def server_time_ms(self) -> int: ...

    async def exchange_info(self) -> dict: ...

    async def account(self) -> dict: ...

    async def position_mode(self) -> dict: ...

    async def multi_assets_mode(self) -> dict: ...

    async def set_leverage(self, symbol: str, leverage: int) -> dict: ...

    async def set_margin_type(self, symbol: str, margin_type: str) -> dict: ...

    async def order_rate_limits(self) -> list[dict]: ...


@dataclass(frozen=True)
class PreflightConfig:
    """How the account must be set up.

    Args:
        symbols: the traded symbols.
        leverage: leverage to set per symbol (`parse_leverage`); a symbol not in it is not changed.
        margin_type: `CROSSED` or `ISOLATED`, set on every symbol.
        multi_assets: the multi-assets mode the account must be in.
        min_available_balance: the least available balance of `balance_asset` to trade with.
        balance_asset: the margin asset whose balance is checked.
    """

    symbols: tuple[str, ...]
    leverage: Mapping[str, int] = field(default_factory=dict)
    margin_type: str = "CROSSED"
    multi_assets: bool = False
    min_available_balance: Decimal = Decimal(0)
    balance_asset: str = "USDT"


@dataclass(frozen=True)
class VenueLimits:
    """The venue's own request limits (exchangeInfo `rateLimits`), for the request budget (FM-N2)."""

    weight_limit_1m: int | None = None
    order_limit_10s: int | None = None
    order_limit_1m: int | None = None


@dataclass
class PreflightReport:
    """The outcome of one preflight run."""

    checks: list[PreflightCheckValue] = field(default_factory=list)
    reachable: bool = True
    """False: the venue gave no definite answer; the checks are incomplete (retry later)."""
    limits: VenueLimits | None = None
    clock_offset_ms: int | None = None

    @property
    def ok(self) -> bool:
        return self.reachable and bool(self.checks) and all(check.ok for check in self.checks)

    def failures(self) -> list[PreflightCheckValue]:
        return [check for check in self.checks if not check.ok]

    def reason(self) -> str:
        """One line naming every failed check, for the halt's reason."""
        if not self.reachable:
            return "venue unreachable: " + "; ".join(check.message for check in self.failures())
        return "; ".join(f"{check.name}: {check.message}" for check in self.failures())


def parse_leverage(text: str, symbols: tuple[str, ...]) -> dict[str, int]:
    """`"5"` (every symbol) or `"BTCUSDT=10,ETHUSDT=5"` (per symbol; `*=N` for the others) → symbol → leverage.

    Empty: no leverage is set. Raises ValueError naming the bad entry.
    """
    text = text.strip()
    if not text:
        return {}
    default: int | None = None
    chosen: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, _, value = item.rpartition("=")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"leverage {item!r}: expected N or SYMBOL=N with N a whole number") from None
        if not 1 <= number <= 125:
            raise ValueError(f"leverage {item!r}: Binance allows 1 to 125")
        if name in ("", "*"):
            default = number
        else:
            chosen[name.strip().upper()] = number
    result = {symbol: default for symbol in symbols if default is not None}
    result.update(chosen)
    return result


def _transient(error: VenueError) -> bool:
    """An outage or a throttle (5xx, 429, 418), not a verdict on the account: try again later."""
    return error.status >= 500 or error.status in (418, 429)


def _check(name: str, ok: bool, message: str, *, warning: bool = False) -> PreflightCheckValue:
    return PreflightCheckValue(name=name, ok=ok, message=message, warning=warning)


def _venue_answer(error: VenueError) -> str:
    return f"HTTP {error.status} code={error.code}: {error.msg}"


def check_profile(profile: str, rest_url: str) -> PreflightCheckValue | None:
    """A real-money endpoint under another profile would trade real money without the real-money
    profile's start HALT: refused. None when the profile fits the URL."""
    mainnet = urlsplit(PROFILE_URLS[REAL_MONEY_PROFILE][0]).hostname
    if urlsplit(rest_url).hostname == mainnet and profile != REAL_MONEY_PROFILE:
        return _check(
            "configuration",
            False,
            f"{rest_url} is Binance mainnet (real money) but BULWARK_VENUE_PROFILE is {profile!r}: set "
            f"BULWARK_VENUE_PROFILE={REAL_MONEY_PROFILE} (or `bulwark up --venue binance`), which starts HALTED",
        )
    return None


def check_server_time(offset_ms: int) -> PreflightCheckValue:
    """The local clock against the venue's (SPEC FM-D3)."""
    magnitude = abs(offset_ms)
    if magnitude > CLOCK_FAIL_MS:
        return _check(
            "server_time",
            False,
            f"local clock is {offset_ms} ms off the venue's (more than {CLOCK_FAIL_MS} ms): signed requests "
            "would be refused (-1021); synchronise this machine's clock (chrony/ntpd, `timedatectl set-ntp true`)",
        )
    if magnitude > CLOCK_WARN_MS:
        return _check(
            "server_time",
            True,
            f"local clock is {offset_ms} ms off the venue's (more than {CLOCK_WARN_MS} ms): synchronise it soon",
            warning=True,
        )
    return _check("server_time", True, f"local clock within {offset_ms} ms of the venue's")


def check_account(account: Mapping[str, Any]) -> PreflightCheckValue:
    """The key is valid (the account answered) and may trade futures; warns if it may withdraw."""
    if account.get("canTrade") is not True:
        return _check(
            "api_key",
            False,
            "the API key may not trade futures (canTrade=false): enable 'Enable Futures' for the key in the "
            "venue's API management, or use another key",
        )
    if account.get("canWithdraw") is True:
        return _check(
            "api_key",
            True,
            "API key valid and may trade futures, but it may also WITHDRAW: a trading key should not; "
            "create one without withdrawal permission (and restrict it to this machine's IP)",
            warning=True,
        )
    return _check("api_key", True, "API key valid and may trade futures")


def check_api_key_error(error: VenueError) -> PreflightCheckValue:
    """The account could not be read: why, in terms of the key."""
    if error.status in (401, 403) or error.code in _AUTH_CODES:
        hint = (
            "check BULWARK_VENUE_API_KEY / BULWARK_VENUE_API_SECRET (or --venue-key-file), the key's IP "
            "restriction, and that it is a key of this venue (testnet and mainnet keys differ)"
        )
    else:
        hint = "the account could not be read"
    return _check("api_key", False, f"venue refused the API key ({_venue_answer(error)}): {hint}")


def check_position_mode(answer: Mapping[str, Any]) -> PreflightCheckValue:
    """One-way mode; hedge mode is refused with the call that changes it."""
    dual = answer.get("dualSidePosition")
    if dual is False:
        return _check("position_mode", True, "one-way mode (dualSidePosition=false)")
    if dual is True:
        return _check(
            "position_mode",
            False,
            "the account is in hedge mode (dualSidePosition=true); Bulwark trades one-way: change it with "
            "`POST /fapi/v1/positionSide/dual dualSidePosition=false` (signed; refused while any position or "
            "open order exists) or in the futures web page: Preferences > Position Mode > One-way",
        )
    return _check("position_mode", False, f"unreadable position mode answer: {dict(answer)!r:.200}")


def check_multi_assets(answer: Mapping[str, Any], expected: bool) -> PreflightCheckValue:
    """The account's multi-assets mode is the configured one (BULWARK_VENUE_MULTI_ASSETS)."""
    actual = answer.get("multiAssetsMargin")
    if not isinstance(actual, bool):
        return _check("multi_assets_mode", False, f"unreadable multi-assets answer: {dict(answer)!r:.200}")
    if actual == expected:
        return _check("multi_assets_mode", True, f"multi-assets mode {'on' if actual else 'off'}, as configured")
    return _check(
        "multi_assets_mode",
        False,
        f"multi-assets mode is {'on' if actual else 'off'}, configured {'on' if expected else 'off'} "
        f"(BULWARK_VENUE_MULTI_ASSETS): change it with `POST /fapi/v1/multiAssetsMargin "
        f"multiAssetsMargin={'true' if expected else 'false'}` or set the setting to what the account uses",
    )


def check_symbol(symbol: str, exchange_info: Mapping[str, Any]) -> PreflightCheckValue:
    """The symbol exists on the venue and is `TRADING`."""
    name = f"symbol.{symbol}"
    found = next((item for item in exchange_info.get("symbols") or [] if item.get("symbol") == symbol), None)
    if found is None:
        return _check(name, False, f"{symbol} is not listed on this venue: remove it from BULWARK_SYMBOLS / --symbols")
    status = found.get("status")
    if status != "TRADING":
        return _check(name, False, f"{symbol} is {status} on the venue, not TRADING: no order can be placed")
    return _check(name, True, f"{symbol} TRADING")


def check_leverage(symbol: str, wanted: int, answer: Mapping[str, Any] | VenueError) -> PreflightCheckValue:
    """The venue took the configured leverage."""
    name = f"leverage.{symbol}"
    if isinstance(answer, VenueError):
        return _check(
            name,
            False,
            f"setting {symbol} leverage to {wanted}x was refused ({_venue_answer(answer)}): choose a leverage "
            "the symbol's bracket allows (BULWARK_VENUE_LEVERAGE)",
        )
    try:
        got = int(answer.get("leverage", -1))
    except (TypeError, ValueError):
        got = -1
    if got != wanted:
        return _check(name, False, f"asked {symbol} leverage {wanted}x, the venue answered {dict(answer)!r:.200}")
    return _check(name, True, f"{symbol} leverage set to {wanted}x")


def check_margin_type(symbol: str, wanted: str, answer: Mapping[str, Any] | VenueError) -> PreflightCheckValue:
    """The venue took the configured margin type (-4046: it already was)."""
    name = f"margin_type.{symbol}"
    if isinstance(answer, VenueError):
        if answer.code == NO_NEED_TO_CHANGE_MARGIN_TYPE:
            return _check(name, True, f"{symbol} margin type already {wanted}")
        return _check(
            name,
            False,
            f"setting {symbol} margin type to {wanted} was refused ({_venue_answer(answer)}): it cannot change "
            "while the symbol has a position or open orders; close them, or configure the margin type the "
            "account uses (BULWARK_VENUE_MARGIN_TYPE)",
        )
    return _check(name, True, f"{symbol} margin type set to {wanted}")


def check_balance(account: Mapping[str, Any], asset: str, minimum: Decimal) -> PreflightCheckValue:
    """Enough available balance of the margin asset to trade with."""
    row = next((item for item in account.get("assets") or [] if item.get("asset") == asset), None)
    raw = (row or {}).get("availableBalance", account.get("availableBalance") if row is None else None)
    try:
        available = Decimal(str(raw))
    except (InvalidOperation, ValueError):
        return _check("balance", False, f"no readable available balance of {asset} in the account ({raw!r})")
    if available <= 0 or available < minimum:
        floor = f"the configured minimum {minimum} (BULWARK_VENUE_MIN_BALANCE)" if minimum > 0 else "zero"
        return _check(
            "balance",
            False,
            f"available {available} {asset} is not above {floor}: transfer {asset} to the USD-M futures wallet "
            "(testnet: the testnet's faucet)",
        )
    return _check("balance", True, f"available {available} {asset}")


def _limits_of(items: Any) -> dict[str, int]:
    """The limits the request budget keeps, from Binance `rateLimits` rows (unknown rows skipped)."""
    limits: dict[str, int] = {}
    for item in items if isinstance(items, list) else []:
        try:
            kind, interval, count, limit = (
                item["rateLimitType"],
                item["interval"],
                int(item["intervalNum"]),
                int(item["limit"]),
            )
        except (KeyError, TypeError, ValueError):
            continue
        match (kind, interval, count):
            case ("REQUEST_WEIGHT", "MINUTE", 1):
                limits["weight_limit_1m"] = limit
            case ("ORDERS", "SECOND", 10):
                limits["order_limit_10s"] = limit
            case ("ORDERS", "MINUTE", 1):
                limits["order_limit_1m"] = limit
    return limits


def check_rate_limits(
    exchange_info: Mapping[str, Any], account_limits: Any = None
) -> tuple[PreflightCheckValue, VenueLimits | None]:
    """The venue's rateLimits and the account's own order limits (`GET /fapi/v1/rateLimit/order`;
    the lower of the two counts), for the request budget; a venue without them keeps Binance's defaults.

    Args:
        exchange_info: the venue's exchangeInfo.
        account_limits: the account's order-limit rows, the `VenueError` that refused them (noted,
            not a failure: not every venue serves them), or None when not asked.
    """
    limits = _limits_of(exchange_info.get("rateLimits"))
    note = ""
    if isinstance(account_limits, VenueError):
        note = f"; the account's own order limits not available ({_venue_answer(account_limits)})"
    else:
        own = _limits_of(account_limits)
        for key, value in own.items():
            limits[key] = min(value, limits.get(key, value))
        if own:
            listed = ", ".join(f"{key}={value}" for key, value in sorted(own.items()))
            note = f"; the account's own order limits applied (rateLimit/order: {listed})"
        elif account_limits is not None:
            note = "; the account's own order limits: none listed"
    if not limits:
        return _check(
            "rate_limits", True, f"no rateLimits from the venue: Binance's defaults kept{note}", warning=True
        ), None
    text = ", ".join(f"{key}={value}" for key, value in sorted(limits.items()))
    return _check("rate_limits", True, f"venue limits loaded into the request budget: {text}{note}"), VenueLimits(
        **limits
    )


async def run_preflight(venue: PreflightVenue, config: PreflightConfig, clock_ns: Callable[[], int]) -> PreflightReport:
    """Every check against the venue, in the order an operator would fix them.

    Never raises for a venue answer: a definite refusal is a failed check; no answer at all ends
    the run with `reachable=False` and a `venue` check saying why.
    """
    report = PreflightReport()
    add = report.checks.append
    try:
        sent = clock_ns()
        server_ms = int(await venue.server_time_ms())
        midpoint_ns = (sent + clock_ns()) // 2
        report.clock_offset_ms = (server_ms * _NS_PER_MS - midpoint_ns) // _NS_PER_MS
        add(check_server_time(report.clock_offset_ms))
        account: Mapping[str, Any] | None = None
        try:
            account = await venue.account()
            add(check_account(account))
        except VenueError as exc:
            if _transient(exc):
                raise
            add(check_api_key_error(exc))
        if account is None:
            # Every signed call would be refused the same way: one clear failure is enough.
            return report
        add(await _answer_check(venue.position_mode, check_position_mode, "position_mode"))
        add(
            await _answer_check(
                venue.multi_assets_mode,
                lambda answer: check_multi_assets(answer, config.multi_assets),
                "multi_assets_mode",
            )
        )
        info = await venue.exchange_info()
        for symbol in config.symbols:
            symbol_check = check_symbol(symbol, info)
            add(symbol_check)
            if not symbol_check.ok:
                continue
            if symbol in config.leverage:
                add(
                    check_leverage(
                        symbol,
                        config.leverage[symbol],
                        await _answer(venue.set_leverage(symbol, config.leverage[symbol])),
                    )
                )
            add(
                check_margin_type(
                    symbol, config.margin_type, await _answer(venue.set_margin_type(symbol, config.margin_type))
                )
            )
        add(check_balance(account, config.balance_asset, config.min_available_balance))
        account_limits = await _answer(venue.order_rate_limits())
        limits_check, report.limits = check_rate_limits(info, account_limits)
        add(limits_check)
    except (VenueUnreachable, VenueTimeout) as exc:
        report.reachable = False
        add(_check("venue", False, f"no answer from the venue ({type(exc).__name__}: {exc})"))
    except VenueError as exc:
        if _transient(exc):
            report.reachable = False
            add(_check("venue", False, f"venue busy or down ({_venue_answer(exc)})"))
        else:
            add(_check("venue", False, f"unexpected refusal ({_venue_answer(exc)})"))
    except (KeyError, TypeError, ValueError) as exc:
        add(_check("venue", False, f"unreadable venue answer ({type(exc).__name__}: {exc})"))
    return report


async def _answer(call: Any) -> Any:
    """The answer of a definite call, or its VenueError when the venue refused (an outage still raises)."""
    try:
        return await call
    except VenueError as exc:
        if _transient(exc):
            raise
        return exc


async def _answer_check(
    call: Callable[[], Any], check: Callable[[Mapping[str, Any]], PreflightCheckValue], name: str
) -> PreflightCheckValue:
    answer = await _answer(call())
    if isinstance(answer, VenueError):
        return _check(name, False, f"venue refused the query ({_venue_answer(answer)})")
    if not isinstance(answer, Mapping):
        return _check(name, False, f"unreadable answer: {answer!r:.200}")
    return check(answer)
