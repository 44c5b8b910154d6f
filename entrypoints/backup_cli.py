"""`bulwark backup` and `bulwark restore`: the cold backup of a stopped `bulwark up` data dir.

The archive and its checks are `entrypoints.backup`; this module is the command line around it:
it refuses while a system runs on the data dir (it never stops one), draws progress on a terminal
(`entrypoints.progress`), prints only the JSON result with `--json`, and exits 0 (done),
1 (failed: unreadable, truncated or damaged archive, I/O error) or 2 (refused: a system runs,
the target is not empty or exists, bad arguments) — as `bulwark up` refuses with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TextIO

from entrypoints import backup
from entrypoints.launcher import system_running_on
from entrypoints.progress import progress

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
DEFAULT_DATA_DIR = Path(".bulwark")


def add_parser(commands: Any) -> None:
    """Register `bulwark backup` and `bulwark restore`."""
    save = commands.add_parser(
        "backup",
        help="cold backup of a stopped system's data dir into a .tar.gz (docs/operations.md, Backup and restore)",
        description="Copy the data dir of a stopped `bulwark up` (NATS JetStream store, Postgres, Valkey, "
        "credentials) into a tar.gz with a MANIFEST.json of every file's size and sha256. Refused while the "
        "system runs.",
    )
    save.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="the data dir (default ./.bulwark)")
    save.add_argument("--to", type=Path, required=True, metavar="FILE.tar.gz", help="the backup file to write")
    save.add_argument("--json", action="store_true", help="no progress display, only the JSON result")

    load = commands.add_parser(
        "restore",
        help="restore a backup into a new (or, with --force, a stopped) data dir, every file checked first",
        description="Unpack a `bulwark backup` archive beside the data dir, check every file against its "
        "manifest, then move it into place. Refused while a system runs on the data dir or when it is not "
        "empty (--force moves it aside to DIR.before-restore-<time>). --verify-only checks and writes nothing.",
    )
    load.add_argument("--from", dest="source", type=Path, required=True, metavar="FILE.tar.gz", help="the backup")
    load.add_argument("--data-dir", type=Path, help="where to restore (required unless --verify-only)")
    load.add_argument(
        "--force", action="store_true", help="move a non-empty (stopped) data dir aside instead of refusing"
    )
    load.add_argument(
        "--verify-only", action="store_true", help="unpack into a temporary dir, check every file, remove it"
    )
    load.add_argument("--json", action="store_true", help="no progress display, only the JSON result")


def _out(line: str) -> None:
    _write(sys.stdout, line)


def _err(line: str) -> None:
    _write(sys.stderr, line)


def _write(stream: TextIO, line: str) -> None:
    stream.write(line + "\n")
    stream.flush()


def _size(count: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    value, unit = float(count), 0
    while value >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    return f"{value:.1f} {units[unit]}" if unit else f"{count} B"


def _fail(args: argparse.Namespace, exc: backup.BackupError) -> int:
    code = EXIT_REFUSED if isinstance(exc, backup.BackupRefused) else EXIT_FAILED
    _err(f"bulwark {args.command}: {exc}")
    if args.json:
        _out(json.dumps({"ok": False, "refused": code == EXIT_REFUSED, "error": str(exc)}, sort_keys=True))
    return code


def _refuse_running(data_dir: Path) -> None:
    pid = system_running_on(data_dir)
    if pid is not None:
        raise backup.BackupRefused(
            f"a system runs on {data_dir} (supervisord pid {pid}); stop it first (Ctrl-C on `bulwark up`): "
            "only a stopped system's files are consistent"
        )
    pid = backup.postgres_pid(data_dir)
    if pid is not None:
        raise backup.BackupRefused(
            f"a Postgres still runs on {data_dir / 'postgres'} (pid {pid}, postmaster.pid); stop it first: "
            "only a stopped server's files are consistent"
        )


def cmd_backup(args: argparse.Namespace) -> int:
    data_dir = args.data_dir.resolve()
    try:
        if not data_dir.is_dir():
            raise backup.BackupRefused(f"{data_dir}: no such data dir")
        _refuse_running(data_dir)
        entries = backup.collect(data_dir)
        files = [path for entry, path in entries if entry.kind == "file"]
        total = sum(path.stat().st_size for path in files)
        with progress(f"backing up {len(files)} files ({_size(total)})", total, quiet=args.json) as advance:
            manifest = backup.write_backup(data_dir, args.to, time.time_ns(), advance)
        try:
            _refuse_running(data_dir)
        except backup.BackupRefused as exc:
            args.to.resolve().unlink(missing_ok=True)  # its files changed under it: not a backup
            raise backup.BackupRefused(f"the system started during the backup, which was discarded: {exc}") from exc
    except backup.BackupError as exc:
        return _fail(args, exc)
    target = args.to.resolve()
    result = {
        "ok": True,
        "backup": str(target),
        "data_dir": str(data_dir),
        "files": len(manifest.files),
        "bytes": manifest.total_bytes,
        "archive_bytes": target.stat().st_size,
        "created_ns": manifest.created_ns,
        "bulwark_version": manifest.bulwark_version,
    }
    if args.json:
        _out(json.dumps(result, sort_keys=True))
    else:
        _out(
            f"backed up {data_dir}: {result['files']} files, {_size(manifest.total_bytes)} "
            f"-> {target} ({_size(result['archive_bytes'])}, mode 0600: it holds credentials)"
        )
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    source = args.source.resolve()
    try:
        if args.verify_only == (args.data_dir is not None):
            raise backup.BackupRefused("give --data-dir DIR to restore, or --verify-only to check the backup")
        if not source.is_file():
            raise backup.BackupRefused(f"{source}: no such backup file")
        if args.verify_only:
            manifest = _verify_only(source, args.json)
            data_dir, aside = None, None
        else:
            data_dir = args.data_dir.resolve()
            _refuse_running(data_dir)
            manifest, aside = backup.restore(
                source, data_dir, time.time_ns(), force=args.force, stage=_stages(args.json)
            )
    except backup.BackupError as exc:
        return _fail(args, exc)
    result: dict[str, Any] = {
        "ok": True,
        "backup": str(source),
        "verified": True,
        "data_dir": str(data_dir) if data_dir else None,
        "moved_aside": str(aside) if aside else None,
        "files": len(manifest.files),
        "bytes": manifest.total_bytes,
        "created_ns": manifest.created_ns,
        "bulwark_version": manifest.bulwark_version,
    }
    if args.json:
        _out(json.dumps(result, sort_keys=True))
    elif data_dir is None:
        _out(f"{source}: {result['files']} files, {_size(manifest.total_bytes)}, every sha256 matches its manifest")
    else:
        _out(f"restored {source} into {data_dir}: {result['files']} files, {_size(manifest.total_bytes)}, all verified")
        if aside:
            _out(f"the previous data dir is kept at {aside}; remove it once the restored system runs well")
    return EXIT_OK


def _stages(quiet: bool) -> backup.Stage:
    def stage(description: str, total: int | None) -> AbstractContextManager[backup.Advance]:
        return progress(description, total, quiet=quiet)

    return stage


def _verify_only(source: Path, quiet: bool) -> backup.Manifest:
    with backup.scratch_beside(source.parent / f"{source.name}.verify") as scratch:
        return backup.unpack_and_verify(source, scratch, _stages(quiet))


def run(args: argparse.Namespace) -> int:
    """Run `bulwark backup` or `bulwark restore`; the exit code."""
    if args.command == "backup":
        return cmd_backup(args)
    return cmd_restore(args)
