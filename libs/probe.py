"""Container health probe: `python -m libs.probe --file PATH --max-age-s N` or `--url URL`.

Services without an HTTP port touch `BULWARK_ALIVE_FILE` on every heartbeat; the file probe
passes while that file is fresh, so a hung event loop (no heartbeat) fails the probe even
though the process still exists. The URL probe exists because the slim image has no curl: it
lets Docker healthchecks hit the gateway's and the simulator's HTTP health endpoints.

Exit status 0 means healthy; 1 means unhealthy, with the reason on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

DEFAULT_MAX_AGE_S = 5.0
DEFAULT_TIMEOUT_S = 3.0


def check_file(path: Path, max_age_s: float, now_s: float | None = None) -> str | None:
    """Check that `path` was modified within the last `max_age_s` seconds.

    Args:
        path: the alive file a service touches on every heartbeat.
        max_age_s: the oldest modification age still considered alive.
        now_s: current wall-clock time in seconds (defaults to `time.time()`).

    Returns:
        None when the file is fresh, otherwise the reason it is not.
    """
    try:
        modified_s = path.stat().st_mtime
    except FileNotFoundError:
        return f"alive file {path} does not exist (service not started or heartbeat off)"
    except OSError as exc:
        return f"alive file {path} cannot be read: {exc}"
    current_s = time.time() if now_s is None else now_s
    age_s = current_s - modified_s
    if age_s > max_age_s:
        return f"alive file {path} is {age_s:.1f} s old (max {max_age_s:g} s): heartbeat stopped"
    return None


def check_url(url: str, timeout_s: float) -> str | None:
    """Check that an HTTP GET of `url` answers with a 2xx status within `timeout_s`.

    Args:
        url: an http(s) health endpoint, e.g. `http://127.0.0.1:8000/health/live`.
        timeout_s: connect and read timeout.

    Returns:
        None when the endpoint answers 2xx, otherwise the reason it does not.
    """
    if not url.startswith(("http://", "https://")):
        return f"{url}: only http and https URLs are probed"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"{url} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url} unreachable: {exc}"
    if not 200 <= status < 300:
        return f"{url} answered HTTP {status}"
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m libs.probe",
        description="Exit 0 if the service is alive, 1 (reason on stderr) if not.",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--file", type=Path, help="alive file touched on every heartbeat")
    target.add_argument("--url", help="HTTP health endpoint that must answer 2xx")
    parser.add_argument(
        "--max-age-s",
        type=float,
        default=DEFAULT_MAX_AGE_S,
        help=f"--file: maximum age of the alive file in seconds (default {DEFAULT_MAX_AGE_S:g})",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"--url: request timeout in seconds (default {DEFAULT_TIMEOUT_S:g})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probe.

    Args:
        argv: command-line arguments without the program name (defaults to `sys.argv[1:]`).

    Returns:
        0 when healthy, 1 when not.
    """
    args = _parser().parse_args(argv)
    if args.file is not None:
        problem = check_file(args.file, args.max_age_s)
    else:
        problem = check_url(args.url, args.timeout_s)
    if problem is not None:
        sys.stderr.write(f"unhealthy: {problem}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
