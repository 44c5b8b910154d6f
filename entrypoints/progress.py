"""Progress of long commands (backtest, benches, `chaos run --all`) for a person at a terminal.

Drawn with `rich` on stderr, and only when stderr is a terminal and the caller did not ask for
`--json`: piped or machine-readable runs stay silent, so their stdout is exactly the result. The
bar is transient (gone once the work is done) so it never mixes with what the command prints.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Advance = Callable[[int], None]
"""Call with how many more units are done."""


def _nothing(_: int = 1) -> None:
    return None


def shown(quiet: bool) -> bool:
    """Whether progress is drawn: not `quiet` (`--json`) and stderr is a terminal."""
    return not quiet and sys.stderr.isatty()


@contextmanager
def progress(description: str, total: int | None, *, quiet: bool = False) -> Iterator[Advance]:
    """A progress bar of `total` units (None: a spinner with the elapsed time); yields `advance`.

    Args:
        description: what is being done, e.g. "replaying 2 recordings".
        total: how many units the work has, if known.
        quiet: True for `--json` runs: nothing is drawn.
    """
    if not shown(quiet):
        yield _nothing
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns += [BarColumn(), TaskProgressColumn()]
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(units: int = 1) -> None:
            bar.advance(task, units)

        yield advance
