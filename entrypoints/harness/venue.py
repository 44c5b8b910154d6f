"""Run the venue simulator as a real subprocess on a free loopback port, stopped by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from entrypoints.infra import free_port, tcp_ready

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def running_venue_sim(
    log_dir: Path, *args: str, timeout_s: float = 40.0, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Start `python -m services.venue_sim.main --port P ARGS...`; yields its base URL.

    `env` adds variables to its environment (e.g. the account's `BULWARK_VENUE_API_KEY`).

    Raises:
        AssertionError: the simulator exited or did not listen within `timeout_s` (with its log).
    """
    port = free_port()
    log_path = log_dir / "venue_sim.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.venue_sim.main", "--port", str(port), *args],
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "BULWARK_SYMBOLS": os.environ.get("BULWARK_SYMBOLS", "BTCUSDT,ETHUSDT"), **(env or {})},
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not tcp_ready("127.0.0.1", port, 0.2):
            assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "venue simulator did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
