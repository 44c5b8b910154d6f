"""Cold backup and restore of a `bulwark up` data dir: the archive, its manifest and its checks.

A backup is a gzip'd tar of the data dir (NATS JetStream store, Postgres data, Valkey append-only
file, the credentials files) with a `MANIFEST.json` as its last member: format version, creation
time, Bulwark version and every directory and file with its mode and owner, every file with its
size and sha256. It is written under a temporary name beside the target, readable by its owner
only (it holds credentials), and renamed into place once complete.

A restore unpacks into a temporary dir beside the target, refuses anything but plain files and
directories with relative names inside the archive, checks every file against the manifest (no
file missing, none extra, sizes and hashes equal), gives every entry its recorded mode, and only
then renames the result into place. Any failure leaves the target as it was.

Only a stopped system is copied (the caller checks): the stores are consistent on disk only when
their servers are down. Not copied: logs (diagnostics, not state; they stay with the old dir),
supervisord's pid file and socket, Postgres' `postmaster.pid`, the endpoints file of the last run
and any socket or other special file (all of them describe a process that no longer runs).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import pwd
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import IO, Any

from entrypoints import infra
from entrypoints.operator_api import ENDPOINTS_FILE

FORMAT = "bulwark-backup"
FORMAT_VERSION = 1
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_MAX_BYTES = 64 * 1024 * 1024
"""A larger manifest is not one this code wrote: refused before it is read into memory."""

SKIPPED_PATHS: tuple[str, ...] = (
    "logs",
    "supervisord.pid",
    "supervisor.sock",
    ENDPOINTS_FILE,
    "postgres/postmaster.pid",
)
"""Data-dir-relative paths never backed up (a directory: with everything under it)."""

MODE_MASK = 0o755
"""Modes restored at most: never set-id bits, never writable by group or others."""

CHUNK = 1024 * 1024

Advance = Callable[[int], None]
Stage = Callable[[str, int | None], AbstractContextManager[Advance]]
"""Opens the progress of one stage: (description, total units) -> a context yielding `advance`."""


@contextlib.contextmanager
def no_progress(description: str, total: int | None) -> Iterator[Advance]:
    yield lambda _: None


class BackupError(Exception):
    """The backup or restore failed; nothing was left under the final name."""


class BackupRefused(BackupError):
    """The backup or restore would be unsafe (system running, target not empty, ...): nothing was done."""


@dataclass(frozen=True)
class Entry:
    """One directory or file of a data dir as the manifest records it.

    Attributes:
        path: relative POSIX path inside the data dir ("." is the data dir itself).
        kind: "dir" or "file".
        mode: permission bits (e.g. 0o600 for credentials, 0o700 for Postgres' data dir).
        owner: the owning user's name (Postgres' files belong to its own user when run as root).
        size: bytes (files only).
        sha256: hex digest of the content (files only).
    """

    path: str
    kind: str
    mode: int
    owner: str
    size: int = 0
    sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"path": self.path, "type": self.kind, "mode": f"{self.mode:04o}", "owner": self.owner}
        if self.kind == "file":
            record |= {"size": self.size, "sha256": self.sha256}
        return record

    @classmethod
    def from_json(cls, record: Any) -> Entry:
        """Raises: BackupError for a record this code could not have written."""
        try:
            kind = record["type"]
            entry = cls(
                path=check_member_name(str(record["path"])),
                kind=kind,
                mode=int(record["mode"], 8),
                owner=str(record.get("owner", "")),
                size=int(record["size"]) if kind == "file" else 0,
                sha256=str(record["sha256"]) if kind == "file" else "",
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BackupError(f"the manifest has a malformed entry {record!r:.200}: {exc}") from exc
        if kind not in ("dir", "file") or entry.size < 0:
            raise BackupError(f"the manifest has a malformed entry {record!r:.200}")
        return entry


@dataclass(frozen=True)
class Manifest:
    """What a backup holds (`MANIFEST.json`)."""

    created_ns: int
    bulwark_version: str
    entries: tuple[Entry, ...]

    @property
    def files(self) -> tuple[Entry, ...]:
        return tuple(entry for entry in self.entries if entry.kind == "file")

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_json(self) -> dict[str, Any]:
        created = datetime.datetime.fromtimestamp(self.created_ns / 1e9, tz=datetime.UTC)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": created.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "created_ns": self.created_ns,
            "bulwark_version": self.bulwark_version,
            "skipped": list(SKIPPED_PATHS),
            "files": len(self.files),
            "bytes": self.total_bytes,
            "entries": [entry.to_json() for entry in self.entries],
        }

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        """Raises: BackupError when `raw` is not a manifest of a format this code reads."""
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise BackupError(f"{MANIFEST_NAME} is not JSON: {exc}") from exc
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise BackupError(f"{MANIFEST_NAME} is not a Bulwark backup manifest")
        if document.get("format_version") != FORMAT_VERSION:
            raise BackupError(
                f"backup format version {document.get('format_version')!r} is not supported "
                f"(this Bulwark reads version {FORMAT_VERSION})"
            )
        entries = document.get("entries")
        if not isinstance(entries, list):
            raise BackupError(f"{MANIFEST_NAME} lists no entries")
        parsed = tuple(Entry.from_json(record) for record in entries)
        paths = [entry.path for entry in parsed]
        if len(set(paths)) != len(paths):
            raise BackupError(f"{MANIFEST_NAME} lists a path twice")
        return cls(int(document.get("created_ns", 0)), str(document.get("bulwark_version", "")), parsed)


def bulwark_version() -> str:
    try:
        return metadata.version("bulwark")
    except metadata.PackageNotFoundError:
        return "unknown"


def check_member_name(name: str) -> str:
    """`name` as a safe relative path inside the target, or BackupError.

    Refused: empty names, absolute paths, `..` anywhere, backslashes and NUL (a path meant for
    another system or to confuse a check).
    """
    if not name or "\x00" in name or "\\" in name:
        raise BackupError(f"unsafe name in the archive: {name!r}")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise BackupError(f"unsafe name in the archive (outside the data dir): {name!r}")
    normal = path.as_posix()
    return "." if normal in ("", ".") else normal


def skipped(relative: str) -> bool:
    """Whether a data-dir-relative path is never backed up (`SKIPPED_PATHS`)."""
    return any(relative == path or relative.startswith(path + "/") for path in SKIPPED_PATHS)


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def collect(data_dir: Path) -> list[tuple[Entry, Path]]:
    """Every directory and regular file to back up, parents first, with its path on disk.

    Files are listed with size 0 and no hash: `write_backup` fills them in as it reads them.

    Raises:
        BackupError: a symbolic link in the data dir (a Bulwark data dir has none; following it
            would copy something else, skipping it would lose data silently).
    """
    found: list[tuple[Entry, Path]] = []
    for root, dirs, files in os.walk(data_dir):
        dirs.sort()
        base = Path(root)
        relative_root = base.relative_to(data_dir).as_posix()
        if relative_root != "." and skipped(relative_root):
            dirs[:] = []
            continue
        info = base.lstat()
        found.append((Entry(relative_root, "dir", stat.S_IMODE(info.st_mode), _owner(info.st_uid)), base))
        for name in sorted(files + [d for d in dirs if (base / d).is_symlink()]):
            path = base / name
            relative = path.relative_to(data_dir).as_posix()
            if skipped(relative):
                continue
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                raise BackupError(f"{path} is a symbolic link: a Bulwark data dir has none; refusing to guess")
            if not stat.S_ISREG(info.st_mode):
                continue  # sockets, fifos: they belong to a process, not to the state
            found.append((Entry(relative, "file", stat.S_IMODE(info.st_mode), _owner(info.st_uid)), path))
    return found


class _HashingReader:
    """Reads a file for tarfile, hashing and counting what passes, and reporting progress."""

    def __init__(self, handle: IO[bytes], advance: Advance) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0
        self.advance = advance

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        self.size += len(data)
        self.advance(len(data))
        return data


def _tar_info(entry: Entry, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo("." if entry.path == "." else entry.path)
    info.type = tarfile.DIRTYPE if entry.kind == "dir" else tarfile.REGTYPE
    info.mode = entry.mode
    info.size = size
    info.uname = entry.owner
    return info


def write_backup(data_dir: Path, target: Path, now_ns: int, advance: Advance = lambda _: None) -> Manifest:
    """Write the backup of a stopped system's `data_dir` to `target` (a .tar.gz), mode 0600.

    The archive is written to a temporary file beside `target` and renamed only when complete
    and synced, so `target` is either absent or a whole backup.

    Args:
        now_ns: the creation time recorded in the manifest.
        advance: called with each count of bytes read (progress).

    Raises:
        BackupRefused: `target` exists or lies inside `data_dir`.
        BackupError: reading the data dir or writing the archive failed.
    """
    data_dir, target = data_dir.resolve(), target.resolve()
    if target.exists():
        raise BackupRefused(f"{target} exists; choose another name (a backup is never overwritten)")
    if target.is_relative_to(data_dir):
        raise BackupRefused(f"{target} is inside the data dir {data_dir}; write the backup elsewhere")
    if not target.parent.is_dir():
        raise BackupRefused(f"{target.parent} is not a directory")
    entries: list[Entry] = []
    fd, partial_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    partial = Path(partial_name)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
                for entry, path in collect(data_dir):
                    if entry.kind == "dir":
                        archive.addfile(_tar_info(entry, 0))
                        entries.append(entry)
                        continue
                    size = path.stat().st_size
                    with path.open("rb") as handle:
                        reader = _HashingReader(handle, advance)
                        archive.addfile(_tar_info(entry, size), reader)
                    if reader.size != size:
                        raise BackupError(f"{path} changed while it was read: is the system really stopped?")
                    entries.append(Entry(entry.path, "file", entry.mode, entry.owner, size, reader.digest.hexdigest()))
                manifest = Manifest(now_ns, bulwark_version(), tuple(entries))
                payload = json.dumps(manifest.to_json(), indent=1).encode()
                info = tarfile.TarInfo(MANIFEST_NAME)
                info.size, info.mode = len(payload), 0o600
                archive.addfile(info, _BytesReader(payload))
            raw.flush()
            os.fsync(raw.fileno())
        os.rename(partial, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError | tarfile.TarError):
            raise BackupError(f"backup failed: {exc}") from exc
        raise
    return manifest


class _BytesReader:
    def __init__(self, payload: bytes) -> None:
        self.payload, self.offset = payload, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.payload) if size < 0 else self.offset + size
        chunk = self.payload[self.offset : end]
        self.offset += len(chunk)
        return chunk


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _CountingReader:
    """The raw archive as gzip reads it, reporting how many compressed bytes were consumed."""

    def __init__(self, handle: IO[bytes], advance: Advance) -> None:
        self.handle, self.advance = handle, advance

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.advance(len(data))
        return data


def unpack(archive: Path, into: Path, advance: Advance = lambda _: None) -> Manifest:
    """Unpack `archive` into the empty dir `into` and return its manifest (not yet checked).

    Every member is checked before it is written: a relative name without `..`, a plain file or
    directory (no links, devices, fifos), no name twice; tarfile's `data` filter refuses the same
    again. Read as a stream, so a truncated or corrupt archive fails here.

    Raises:
        BackupError: unreadable, truncated or corrupt archive, an unsafe member, no manifest.
    """
    if not hasattr(tarfile, "data_filter"):  # pragma: no cover - Python < 3.11.4
        raise BackupError("restoring needs Python >= 3.11.4 (tarfile's safe extraction filter)")
    raw_manifest: bytes | None = None
    seen: set[str] = set()
    try:
        with archive.open("rb") as handle, tarfile.open(fileobj=_CountingReader(handle, advance), mode="r|gz") as tar:  # type: ignore[call-overload]
            for member in tar:
                name = check_member_name(member.name)
                if name in seen:
                    raise BackupError(f"the archive holds {name!r} twice")
                seen.add(name)
                if not (member.isreg() or member.isdir()):
                    raise BackupError(f"the archive holds {name!r}, which is not a plain file or directory")
                if name == MANIFEST_NAME:
                    if member.size > MANIFEST_MAX_BYTES:
                        raise BackupError(f"{MANIFEST_NAME} is too large ({member.size} bytes)")
                    extracted = tar.extractfile(member)
                    assert extracted is not None  # a regular file
                    raw_manifest = extracted.read()
                    continue
                tar.extract(member, into, filter="data")
    except BackupError:
        raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BackupError(f"{archive} is not a readable backup (corrupt or truncated?): {exc}") from exc
    if raw_manifest is None:
        raise BackupError(f"{archive} has no {MANIFEST_NAME}: not a Bulwark backup, or truncated")
    return Manifest.parse(raw_manifest)


def _sha256(path: Path, advance: Advance) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            advance(len(chunk))
    return digest.hexdigest()


def verify(root: Path, manifest: Manifest, advance: Advance = lambda _: None) -> None:
    """Check the unpacked tree at `root` is exactly what the manifest lists.

    Raises:
        BackupError: a file missing, extra, of another size or with another sha256.
    """
    listed = {entry.path: entry for entry in manifest.entries}
    on_disk: dict[str, str] = {}
    for base, dirs, files in os.walk(root):
        relative = Path(base).relative_to(root).as_posix()
        on_disk[relative] = "dir"
        for name in files:
            on_disk[(Path(base) / name).relative_to(root).as_posix()] = "file"
        for name in dirs:
            if (Path(base) / name).is_symlink():
                on_disk[(Path(base) / name).relative_to(root).as_posix()] = "link"
    extra = sorted(path for path in on_disk if path not in listed and path != ".")
    if extra:
        raise BackupError(f"the archive holds files its manifest does not list: {', '.join(extra[:5])}")
    for entry in manifest.entries:
        kind = on_disk.get(entry.path)
        if kind != entry.kind:
            raise BackupError(f"{entry.path}: listed in the manifest as a {entry.kind}, missing from the archive")
        if entry.kind != "file":
            continue
        path = root / entry.path
        size = path.lstat().st_size
        if size != entry.size:
            raise BackupError(f"{entry.path}: {size} bytes, the manifest says {entry.size}: the backup is damaged")
        if _sha256(path, advance) != entry.sha256:
            raise BackupError(f"{entry.path}: sha256 differs from the manifest: the backup is damaged")


def apply_modes(root: Path, manifest: Manifest, as_root: bool | None = None) -> None:
    """Give every entry its recorded mode (masked by `MODE_MASK`), deepest first.

    Run as root, entries that belonged to Postgres' own system user are given back to it
    (Postgres refuses a data dir that is not its user's); everything else stays the restoring
    user's.
    """
    as_root = os.geteuid() == 0 if as_root is None else as_root
    postgres_ids: tuple[int, int] | None = None
    if as_root and any(entry.owner == infra.POSTGRES_SYSTEM_USER for entry in manifest.entries):
        with contextlib.suppress(KeyError):
            info = pwd.getpwnam(infra.POSTGRES_SYSTEM_USER)
            postgres_ids = (info.pw_uid, info.pw_gid)
        if postgres_ids is None:
            raise BackupError(
                f"the backup's Postgres files belong to the system user {infra.POSTGRES_SYSTEM_USER!r}, "
                "which does not exist here; create it (useradd --system) and restore again"
            )
    for entry in sorted(manifest.entries, key=lambda e: e.path.count("/"), reverse=True):
        path = root / entry.path
        if postgres_ids is not None and entry.owner == infra.POSTGRES_SYSTEM_USER:
            os.chown(path, *postgres_ids, follow_symlinks=False)
        path.chmod(entry.mode & MODE_MASK)


def postgres_pid(data_dir: Path) -> int | None:
    """The pid of a Postgres still running on `data_dir`'s `postgres/` (its `postmaster.pid`), if any.

    A Postgres can outlive its supervisor (killed with -9, or started by hand); its files are not
    consistent until it stops, whoever started it.
    """
    try:
        pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split("\n", 1)[0].strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def aside_name(data_dir: Path, now_ns: int) -> Path:
    """Where `--force` moves the data dir a restore replaces: `DIR.before-restore-<UTC time>`."""
    stamp = datetime.datetime.fromtimestamp(now_ns / 1e9, tz=datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return data_dir.with_name(f"{data_dir.name}.before-restore-{stamp}")


@contextlib.contextmanager
def scratch_beside(target: Path) -> Iterator[Path]:
    """An empty dir on `target`'s filesystem (so the final rename is atomic), removed unless used."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=target.parent))
    try:
        yield scratch
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def unpack_and_verify(archive: Path, into: Path, stage: Stage = no_progress) -> Manifest:
    """`unpack` then `verify`, each as a stage of progress; the checked manifest.

    Raises:
        BackupError: as `unpack` and `verify`.
    """
    with stage(f"unpacking {archive.name}", archive.stat().st_size) as advance:
        manifest = unpack(archive, into, advance)
    with stage(f"checking {len(manifest.files)} files' sha256", manifest.total_bytes) as advance:
        verify(into, manifest, advance)
    return manifest


def restore(
    archive: Path,
    data_dir: Path,
    now_ns: int,
    *,
    force: bool = False,
    stage: Stage = no_progress,
) -> tuple[Manifest, Path | None]:
    """Restore `archive` into `data_dir` (absent, empty, or with `force` moved aside).

    The caller has checked no system runs on `data_dir`.

    Args:
        now_ns: names the dir `force` moves aside.
        stage: progress of each stage (unpacking: compressed bytes read; checking: bytes hashed).

    Returns:
        The manifest and where the old data dir was moved (None: there was none to keep).

    Raises:
        BackupRefused: `data_dir` holds something and `force` was not given.
        BackupError: the archive is unreadable, unsafe or damaged; `data_dir` is untouched.
    """
    data_dir = data_dir.resolve()
    if not archive.is_file():
        raise BackupRefused(f"{archive}: no such backup file")
    if data_dir.exists() and not data_dir.is_dir():
        raise BackupRefused(f"{data_dir} is not a directory")
    occupied = data_dir.exists() and not is_empty_dir(data_dir)
    if occupied and not force:
        raise BackupRefused(f"{data_dir} is not empty; restore into a new dir, or give --force to move it aside first")
    with scratch_beside(data_dir) as scratch:
        manifest = unpack_and_verify(archive, scratch, stage)
        apply_modes(scratch, manifest)
        aside: Path | None = None
        try:
            if occupied:
                aside = aside_name(data_dir, now_ns)
                if aside.exists():
                    raise BackupRefused(f"{aside} exists already; move it away and restore again")
                data_dir.rename(aside)
            elif data_dir.exists():
                data_dir.rmdir()
            scratch.rename(data_dir)
        except OSError as exc:
            if aside is not None and aside.exists() and not data_dir.exists():
                aside.rename(data_dir)
            raise BackupError(f"could not move the restored data into {data_dir}: {exc}") from exc
        _fsync_dir(data_dir.parent)
    return manifest, aside
