"""The simulated account's modes: position mode (one-way / hedge), multi-assets mode and each
symbol's margin type, as Binance USD-M serves them, plus `/_sim/account_modes` to switch them from
a test (e.g. into hedge mode, which Bulwark's preflight must refuse).

The position mode decides which orders are taken: in hedge mode a one-way order (`positionSide`
BOTH or none) is -4061 as on Binance; hedge-mode positions themselves are not simulated (a LONG or
SHORT order is -4084). Multi-assets mode and margin types are answered and remembered only: orders
fill as cross-margined positions whatever they say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from services.venue_sim.domain import BinanceError
from services.venue_sim.routes.context import Endpoint, RouteGroup, Routes, fixed, one

MARGIN_TYPES = ("CROSSED", "ISOLATED")
NO_NEED_TO_CHANGE_MARGIN_TYPE = -4046
NO_NEED_TO_CHANGE_POSITION_SIDE = -4059
NO_NEED_TO_CHANGE_MULTI_ASSETS = -4171


@dataclass
class AccountModes:
    """What the account is set to."""

    dual_side_position: bool = False
    multi_assets_margin: bool = False
    margin_types: dict[str, str] = field(default_factory=dict)
    """Symbol -> CROSSED/ISOLATED; a symbol never set is CROSSED."""

    def view(self) -> dict[str, Any]:
        return {
            "dualSidePosition": self.dual_side_position,
            "multiAssetsMargin": self.multi_assets_margin,
            "marginTypes": dict(self.margin_types),
        }


def _flag(params: dict[str, str], name: str) -> bool:
    """A Binance `true`/`false` parameter, or its -1102/-1100 answer."""
    raw = params.get(name)
    if raw is None or raw == "":
        raise BinanceError(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    if raw.lower() not in ("true", "false"):
        raise BinanceError(400, -1100, f"Illegal characters found in parameter '{name}'; legal range is 'true,false'.")
    return raw.lower() == "true"


class AccountModeRoutes(RouteGroup):
    """`/fapi/v1/positionSide/dual`, `/fapi/v1/multiAssetsMargin`, `/fapi/v1/marginType` and the control."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.modes = AccountModes()

    def endpoints(self) -> Routes:
        """The signed account-mode endpoints (Binance's weights)."""
        return {
            ("GET", "/fapi/v1/positionSide/dual"): Endpoint(self.position_mode, fixed(30), "SIGNED"),
            ("POST", "/fapi/v1/positionSide/dual"): Endpoint(self.set_position_mode, one, "SIGNED"),
            ("GET", "/fapi/v1/multiAssetsMargin"): Endpoint(self.multi_assets_mode, fixed(30), "SIGNED"),
            ("POST", "/fapi/v1/multiAssetsMargin"): Endpoint(self.set_multi_assets_mode, one, "SIGNED"),
            ("POST", "/fapi/v1/marginType"): Endpoint(self.set_margin_type, one, "SIGNED"),
        }

    def register_control(self, app: web.Application) -> None:
        """Add `GET/POST /_sim/account_modes` (plain JSON, not Binance-shaped)."""
        app.router.add_get("/_sim/account_modes", self.sim_modes)
        app.router.add_post("/_sim/account_modes", self.sim_set_modes)

    async def position_mode(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/positionSide/dual."""
        return {"dualSidePosition": self.modes.dual_side_position}

    async def set_position_mode(self, request: web.Request, params: dict[str, str]) -> Any:
        """POST /fapi/v1/positionSide/dual: refused while positions or open orders exist, as on Binance."""
        wanted = _flag(params, "dualSidePosition")
        if wanted == self.modes.dual_side_position:
            raise BinanceError(400, NO_NEED_TO_CHANGE_POSITION_SIDE, "No need to change position side.")
        if self.exchange.open_orders(None):
            raise BinanceError(400, -4067, "Position side cannot be changed if there exists open orders.")
        if any(position.quantity != 0 for position in self.exchange.account.positions.values()):
            raise BinanceError(400, -4068, "Position side cannot be changed if there exists position.")
        self.modes.dual_side_position = wanted
        self.exchange.dual_side_position = wanted
        self.ctx.log.info("sim_position_mode_changed", dual_side_position=wanted)
        return {"code": 200, "msg": "success"}

    async def multi_assets_mode(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/multiAssetsMargin."""
        return {"multiAssetsMargin": self.modes.multi_assets_margin}

    async def set_multi_assets_mode(self, request: web.Request, params: dict[str, str]) -> Any:
        """POST /fapi/v1/multiAssetsMargin."""
        wanted = _flag(params, "multiAssetsMargin")
        if wanted == self.modes.multi_assets_margin:
            raise BinanceError(400, NO_NEED_TO_CHANGE_MULTI_ASSETS, "No need to change Multi-Assets mode.")
        self.modes.multi_assets_margin = wanted
        return {"code": 200, "msg": "success"}

    async def set_margin_type(self, request: web.Request, params: dict[str, str]) -> Any:
        """POST /fapi/v1/marginType: -4046 when the symbol already has it."""
        symbol = self.ctx.symbol(params)
        wanted = (params.get("marginType") or "").upper()
        if wanted not in MARGIN_TYPES:
            raise BinanceError(400, -1116, "Invalid marginType.")
        if self.modes.margin_types.get(symbol, "CROSSED") == wanted:
            raise BinanceError(400, NO_NEED_TO_CHANGE_MARGIN_TYPE, "No need to change margin type.")
        if self.exchange.position(symbol).quantity != 0:
            raise BinanceError(400, -4048, "Margin type cannot be changed if there exists position.")
        self.modes.margin_types[symbol] = wanted
        return {"code": 200, "msg": "success"}

    async def sim_modes(self, request: web.Request) -> web.Response:
        """GET /_sim/account_modes."""
        return web.json_response(self.modes.view())

    async def sim_set_modes(self, request: web.Request) -> web.Response:
        """POST /_sim/account_modes `{"dualSidePosition": bool, "multiAssetsMargin": bool}`: set them
        directly, as another tool (or the venue's web page) would, whatever is open."""
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        known = {"dualSidePosition": "dual_side_position", "multiAssetsMargin": "multi_assets_margin"}
        unknown = sorted(set(body) - set(known))
        wrong = sorted(key for key in known if key in body and not isinstance(body[key], bool))
        if unknown or wrong:
            return web.json_response(
                {"error": f"unknown fields {unknown}, non-boolean fields {wrong}; allowed: {sorted(known)}"}, status=400
            )
        for key, attribute in known.items():
            if key in body:
                setattr(self.modes, attribute, body[key])
        # Orders follow the position mode: in hedge mode a one-way order is -4061.
        self.exchange.dual_side_position = self.modes.dual_side_position
        self.ctx.log.info("sim_account_modes_set", **self.modes.view())
        return web.json_response(self.modes.view())
