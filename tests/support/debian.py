"""Debian packages a test needs, installed by the test run itself when missing.

CI starts on a fresh Debian machine with only Python: a test that needs a real tool (`promtool`
from `prometheus`, `chromium` with `chromium-driver`, `stress-ng`, ...) asks for it here and gets
its path. Installing is serialised across pytest processes by a file lock, so two sessions on one
machine never run `apt-get` at once. A tool that cannot be installed fails the test with apt's
own words: it is never skipped.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

LOCK = Path("/tmp/bulwark-apt.lock")
INSTALL_TIMEOUT_S = 1200.0


def require_binary(binary: str, *packages: str) -> str:
    """The path of `binary`, installing the Debian `packages` first when it is not on PATH.

    Args:
        binary: the executable the test runs (`promtool`, `chromedriver`, ...).
        packages: the Debian packages that provide it (and anything it needs beside it).

    Returns:
        The absolute path of `binary`.
    """
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail(f"{binary} is missing and only root may install {' '.join(packages)} with apt-get")
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = shutil.which(binary)  # another session may have installed it meanwhile
        if found:
            return found
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
        ):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
            if done.returncode != 0:
                pytest.fail(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    found = shutil.which(binary)
    if not found:
        pytest.fail(f"{' '.join(packages)} installed but {binary} is not on PATH")
    return found
