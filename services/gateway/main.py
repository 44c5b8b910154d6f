"""gateway process: `python -m services.gateway.main`.

Runs the FastAPI app under uvicorn inside `run_service` (bus, Postgres, Valkey, heartbeat).
The listening socket is bound before uvicorn starts, so a busy port is a clear error and a
non-zero exit rather than a half-started service.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from libs.runtime.service import ServiceContext, main
from proto import subjects
from services.gateway.app import create_app
from services.gateway.context import Gateway, GatewayConfig
from services.gateway.http_protocol import HEADER_TIMEOUT_S, MAX_HEADERS, guarded_protocol

EXIT_BIND_FAILED = 3
HTTP_KEEP_ALIVE_S = 5
HTTP_MAX_HEADER_BYTES = 32 * 1024
HTTP_MAX_CONNECTIONS = 1024
IDEMPOTENCY_SWEEP_INTERVAL_S = 3600.0
"""How often Postgres idempotency records past their 24 h TTL are deleted."""


class EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: `run_service` owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port.

    Raises:
        OSError: the address is in use or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def http_config(app: Any, header_timeout_s: float = HEADER_TIMEOUT_S, max_headers: int = MAX_HEADERS) -> uvicorn.Config:
    """uvicorn's configuration of the gateway's HTTP server (limits of every connection)."""
    return uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=2,
        lifespan="off",
        # Slow or idle clients do not hold connections: idle keep-alive closes after 5 s, a header
        # block is bounded in size, field count and read time (slowloris: `GuardedH11Protocol`),
        # and connections beyond the cap are refused at once (the admission budgets shed well
        # before it; the guard bounds the body's read time).
        http=guarded_protocol(header_timeout_s, max_headers, HTTP_MAX_HEADER_BYTES),
        timeout_keep_alive=HTTP_KEEP_ALIVE_S,
        h11_max_incomplete_event_size=HTTP_MAX_HEADER_BYTES,
        limit_concurrency=HTTP_MAX_CONNECTIONS,
    )


async def start_http(ctx: ServiceContext, gateway: Gateway, sock: socket.socket) -> EmbeddedServer:
    """Serve the gateway's app on an already bound socket, stopped with the service."""
    config = http_config(create_app(gateway))
    server = EmbeddedServer(config)
    task = ctx.spawn(server.serve(sockets=[sock]), "http")

    async def stop() -> None:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)

    ctx.cleanups.append(stop)
    return server


async def setup(ctx: ServiceContext) -> None:
    """Track heartbeats and start the HTTP server."""
    settings = ctx.settings
    try:
        sock = bind_socket(settings.gateway_host, settings.gateway_port)
    except OSError as exc:
        ctx.log.error(
            "gateway_bind_failed",
            error_type=type(exc).__name__,
            host=settings.gateway_host,
            port=settings.gateway_port,
            message=str(exc),
            action_taken=f"exit {EXIT_BIND_FAILED}",
        )
        raise SystemExit(EXIT_BIND_FAILED) from exc
    gateway = Gateway(ctx, GatewayConfig())
    await gateway.start()
    ctx.spawn(gateway.idempotency.expire_forever(IDEMPOTENCY_SWEEP_INTERVAL_S), "idempotency-sweep")
    await start_http(ctx, gateway, sock)
    ctx.log.info("gateway_listening", host=settings.gateway_host, port=settings.gateway_port)


if __name__ == "__main__":
    main(subjects.GATEWAY, setup, needs_db=True, needs_cache=True)
