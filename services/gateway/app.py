"""The operator REST API (SPEC §10): `create_app(gateway)` wires the FastAPI app and nothing more.

It puts the `Gateway` (what routes share, see `context`) on `app.state`, adds the metrics
middleware, installs the error handlers and includes the routers of `routes`. Errors always answer
`{"error": {"code", "message", "details"}}`; a dependency that is down answers 503 with `Retry-After`.
The app has no lifespan of its own: `main` starts the gateway (heartbeat tracking) inside
`run_service`, which owns start-up and shutdown.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway.admission import Admission
from services.gateway.context import Gateway
from services.gateway.errors import ApiError, error_body
from services.gateway.guard import InputGuard
from services.gateway.metrics import MetricsMiddleware
from services.gateway.routes import ROUTERS

HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 401: "unauthorized"}


def create_app(gateway: Gateway) -> FastAPI:
    """Build the FastAPI app of one gateway."""
    app = FastAPI(
        title="Bulwark gateway",
        version="1.0",
        description="Operator API of the Bulwark trading system (SPEC §10).",
    )
    app.state.gateway = gateway
    app.state.ctx = gateway.ctx
    # The last added runs first: metrics see every answer, admission refuses before anything is
    # read, the guard checks the request before any parser or auth.
    app.add_middleware(InputGuard, limits=gateway.config.guard)
    app.add_middleware(
        Admission,
        limits=gateway.config.admission,
        tokens=gateway.tokens,
        clock=gateway.monotonic,
        metrics=gateway.metrics,
    )
    app.add_middleware(MetricsMiddleware, metrics=gateway.metrics)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error with the envelope: API errors, framework errors, validation, the unexpected."""
    app.add_exception_handler(ApiError, on_api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, on_unexpected)


async def on_api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = HTTP_ERROR_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else code
    return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)


async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with each failed field (`loc`, `msg`, `type`); 400 `invalid_json` for a body that is not JSON."""
    details = [
        {
            "loc": [str(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg")),
            "type": error.get("type"),
        }
        for error in exc.errors()
    ]
    if any(error["type"] == "json_invalid" for error in details):
        return JSONResponse(error_body("invalid_json", "request body is not valid JSON", details), status_code=400)
    return JSONResponse(error_body("validation_error", "request validation failed", details), status_code=422)


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """500 with the envelope; the error is logged with its traceback, never shown to the caller."""
    gateway: Gateway = request.app.state.gateway
    gateway.ctx.log.exception("request_failed", exc, path=request.url.path)
    return JSONResponse(error_body("internal", "internal error"), status_code=500)
