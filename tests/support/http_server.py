"""A real local HTTP server (aiohttp) on a free port, standing in for an outside service a test
talks to (alert webhooks, chat APIs): never a mock object."""

from __future__ import annotations

from types import TracebackType

from aiohttp import web

from entrypoints import infra as infra_commands


class LocalHttpServer:
    """Serves `app` on 127.0.0.1 at a port the kernel picked; `url` is its base URL once started."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        self.port = infra_commands.free_port("127.0.0.1")
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LocalHttpServer:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.stop()
