"""Cold backup and restore of a data dir (`entrypoints.backup`, `bulwark backup|restore`): a backup
holds every file of the state with its hash and mode and nothing of a running process; a restore
writes nothing into place unless every file matches, and refuses unsafe archives and running systems."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import tarfile
from pathlib import Path

import pytest

from entrypoints import backup, cli

NOW_NS = 1_796_000_000_000_000_000


def _data_dir(root: Path) -> Path:
    """A stopped `bulwark up` data dir in miniature, with what must and must not be backed up."""
    data = root / "data"
    (data / "postgres" / "base").mkdir(parents=True)
    (data / "postgres").chmod(0o700)
    (data / "postgres" / "PG_VERSION").write_text("17\n")
    (data / "postgres" / "base" / "1").write_bytes(os.urandom(70_000))
    (data / "postgres" / "postmaster.pid").write_text("4242\n")
    (data / "nats" / "jetstream" / "ORDERS").mkdir(parents=True)
    (data / "nats" / "jetstream" / "ORDERS" / "1.blk").write_bytes(b"order event" * 100)
    (data / "valkey").mkdir()
    (data / "valkey" / "appendonly.aof").write_text("*1\r\n$4\r\nPING\r\n")
    for name in ("credentials.json", "bus-credentials.json"):
        (data / name).write_text('{"admin_token": "secret"}')
        (data / name).chmod(0o600)
    (data / "logs").mkdir()
    (data / "logs" / "gateway.log").write_text("started\n")
    (data / "supervisord.pid").write_text("999999999\n")  # no such process: the system is stopped
    (data / "endpoints.json").write_text("{}")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(data / "supervisor.sock"))
    return data


def _tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under `root` -> (mode, content of a file)."""
    found: dict[str, tuple[int, bytes | None]] = {}
    for path in sorted(root.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        found[path.relative_to(root).as_posix()] = (mode, path.read_bytes() if path.is_file() else None)
    return found


def _backup(tmp_path: Path) -> tuple[Path, Path]:
    data = _data_dir(tmp_path)
    archive = tmp_path / "backup.tar.gz"
    backup.write_backup(data, archive, NOW_NS)
    return data, archive


def _rewrite(archive: Path, out: Path, change: object) -> Path:
    """Copy `archive` member by member through `change(info, content) -> list[(info, content)]`."""
    with tarfile.open(archive, "r:gz") as source, tarfile.open(out, "w:gz") as target:
        for member in source.getmembers():
            content = source.extractfile(member).read() if member.isreg() else b""  # type: ignore[union-attr]
            for info, data in change(member, content):  # type: ignore[operator]
                info.size = len(data)
                target.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out


def _occupied(tmp_path: Path) -> tuple[Path, dict[str, tuple[int, bytes | None]]]:
    target = tmp_path / "current"
    (target / "postgres").mkdir(parents=True)
    (target / "postgres" / "PG_VERSION").write_text("current\n")
    return target, _tree(target)


def _leftovers(parent: Path) -> list[str]:
    return sorted(path.name for path in parent.iterdir() if ".restore-" in path.name or "before-restore" in path.name)


def test_backup_then_restore_when_stopped_then_state_and_modes_come_back_without_process_files(
    tmp_path: Path,
) -> None:
    data, archive = _backup(tmp_path)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600  # it holds credentials
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []

    target = tmp_path / "restored"
    manifest, aside = backup.restore(archive, target, NOW_NS)

    assert aside is None
    expected = {
        path: value for path, value in _tree(data).items() if not backup.skipped(path) and path != "supervisor.sock"
    }
    assert _tree(target) == expected
    assert _tree(target)["credentials.json"][0] == 0o600
    assert _tree(target)["postgres"][0] == 0o700
    for absent in ("logs", "supervisord.pid", "supervisor.sock", "endpoints.json", "postgres/postmaster.pid"):
        assert not (target / absent).exists(), absent
    assert {entry.path for entry in manifest.files} == {p for p, (_, c) in expected.items() if c is not None}
    assert manifest.created_ns == NOW_NS and manifest.bulwark_version
    assert _leftovers(tmp_path) == []


def test_restore_when_a_file_was_tampered_then_refused_and_target_untouched(tmp_path: Path) -> None:
    _, archive = _backup(tmp_path)

    def tamper(info: tarfile.TarInfo, content: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
        if info.name == "credentials.json":
            return [(info, content.replace(b"secret", b"stolen"))]  # same size, other hash
        return [(info, content)]

    tampered = _rewrite(archive, tmp_path / "tampered.tar.gz", tamper)
    target, before = _occupied(tmp_path)

    with pytest.raises(backup.BackupError, match=r"credentials\.json: sha256 differs"):
        backup.restore(tampered, target, NOW_NS, force=True)

    assert _tree(target) == before
    assert _leftovers(tmp_path) == []


def test_restore_when_a_file_is_not_in_the_manifest_then_refused(tmp_path: Path) -> None:
    _, archive = _backup(tmp_path)

    def smuggle(info: tarfile.TarInfo, content: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
        if info.name == backup.MANIFEST_NAME:
            return [(tarfile.TarInfo("postgres/extra.conf"), b"archive_command = 'sh'"), (info, content)]
        return [(info, content)]

    with pytest.raises(backup.BackupError, match=r"does not list: postgres/extra\.conf"):
        backup.restore(_rewrite(archive, tmp_path / "extra.tar.gz", smuggle), tmp_path / "new", NOW_NS)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("name", "kind"),
    [("../escaped", tarfile.REGTYPE), ("/tmp/absolute", tarfile.REGTYPE), ("nats/link", tarfile.SYMTYPE)],
)
def test_restore_when_a_member_escapes_or_links_then_refused_and_nothing_written(
    tmp_path: Path, name: str, kind: bytes
) -> None:
    _, archive = _backup(tmp_path)

    def inject(info: tarfile.TarInfo, content: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
        if info.name == "credentials.json":
            evil = tarfile.TarInfo(name)
            evil.type = kind
            evil.linkname = "/etc/passwd"
            return [(evil, b"" if kind == tarfile.SYMTYPE else b"owned"), (info, content)]
        return [(info, content)]

    evil_archive = _rewrite(archive, tmp_path / "evil.tar.gz", inject)
    target, before = _occupied(tmp_path)

    with pytest.raises(backup.BackupError, match=r"unsafe name|not a plain file"):
        backup.restore(evil_archive, target, NOW_NS, force=True)

    assert _tree(target) == before
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/absolute").exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_restore_when_archive_truncated_then_clear_error_and_target_untouched(tmp_path: Path, keep: float) -> None:
    _, archive = _backup(tmp_path)
    truncated = tmp_path / "truncated.tar.gz"
    raw = archive.read_bytes()
    truncated.write_bytes(raw[: int(len(raw) * keep)])
    target, before = _occupied(tmp_path)

    with pytest.raises(backup.BackupError, match=r"corrupt or truncated|no MANIFEST\.json"):
        backup.restore(truncated, target, NOW_NS, force=True)

    assert _tree(target) == before
    assert _leftovers(tmp_path) == []


def test_restore_when_target_not_empty_then_refused_unless_force_which_moves_it_aside(tmp_path: Path) -> None:
    _, archive = _backup(tmp_path)
    target, before = _occupied(tmp_path)

    with pytest.raises(backup.BackupRefused, match="not empty"):
        backup.restore(archive, target, NOW_NS)
    assert _tree(target) == before

    _, aside = backup.restore(archive, target, NOW_NS, force=True)

    assert aside == backup.aside_name(target, NOW_NS) and aside.name.startswith("current.before-restore-")
    assert _tree(aside) == before
    assert (target / "credentials.json").read_text() == '{"admin_token": "secret"}'


@pytest.mark.parametrize("name", ["", "a/../../b", "..", "/abs", "a\\..\\b", "nul\x00l"])
def test_check_member_name_when_unsafe_then_refused(name: str) -> None:
    with pytest.raises(backup.BackupError, match="unsafe name"):
        backup.check_member_name(name)


def test_check_member_name_when_relative_then_normalised() -> None:
    assert backup.check_member_name("./postgres/base/1") == "postgres/base/1"
    assert backup.check_member_name("./") == "."


def test_manifest_when_of_another_format_version_then_refused() -> None:
    manifest = backup.Manifest(NOW_NS, "0.1.0", (backup.Entry("a", "file", 0o600, "root", 1, "00"),))
    document = manifest.to_json()
    assert backup.Manifest.parse(json.dumps(document).encode()) == manifest
    with pytest.raises(backup.BackupError, match="format version 2 is not supported"):
        backup.Manifest.parse(json.dumps(document | {"format_version": 2}).encode())
    with pytest.raises(backup.BackupError, match="not a Bulwark backup"):
        backup.Manifest.parse(b'{"format": "other"}')


def test_backup_when_target_exists_or_inside_data_dir_then_refused(tmp_path: Path) -> None:
    data, archive = _backup(tmp_path)
    with pytest.raises(backup.BackupRefused, match="exists"):
        backup.write_backup(data, archive, NOW_NS)
    with pytest.raises(backup.BackupRefused, match="inside the data dir"):
        backup.write_backup(data, data / "self.tar.gz", NOW_NS)


def test_cli_when_a_system_runs_on_the_data_dir_then_both_verbs_refuse_with_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, archive = _backup(tmp_path)
    (data / "supervisord.pid").write_text(f"{os.getpid()}\n")  # a live process: "running"
    before = _tree(data)

    assert cli.main(["backup", "--data-dir", str(data), "--to", str(tmp_path / "b2.tar.gz")]) == 2
    assert "a system runs on" in capsys.readouterr().err
    assert not (tmp_path / "b2.tar.gz").exists()

    assert cli.main(["restore", "--from", str(archive), "--data-dir", str(data), "--force", "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"ok": False, "refused": True, "error": captured.err.split(": ", 1)[1].strip()}
    assert _tree(data) == before


def test_cli_json_when_round_trip_then_stdout_is_only_the_result_and_damage_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _data_dir(tmp_path)
    archive = tmp_path / "b.tar.gz"

    assert cli.main(["backup", "--data-dir", str(data), "--to", str(archive), "--json"]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert saved["ok"] and saved["files"] == 6 and saved["backup"] == str(archive)

    assert cli.main(["restore", "--from", str(archive), "--verify-only", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verified"] is True

    assert cli.main(["restore", "--from", str(archive), "--data-dir", str(tmp_path / "new"), "--json"]) == 0
    restored = json.loads(capsys.readouterr().out)
    assert restored["files"] == 6 and (tmp_path / "new" / "valkey" / "appendonly.aof").is_file()

    raw = archive.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(raw[: len(raw) // 2])
    assert cli.main(["restore", "--from", str(tmp_path / "cut.tar.gz"), "--verify-only"]) == 1
    assert "corrupt or truncated" in capsys.readouterr().err


def test_cli_when_an_orphan_postgres_runs_on_the_data_dir_then_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _data_dir(tmp_path)
    (data / "postgres" / "postmaster.pid").write_text(f"{os.getpid()}\n{data / 'postgres'}\n")

    assert cli.main(["backup", "--data-dir", str(data), "--to", str(tmp_path / "b.tar.gz")]) == 2
    assert "a Postgres still runs on" in capsys.readouterr().err
    assert not (tmp_path / "b.tar.gz").exists()


def test_cli_progress_when_on_a_terminal_then_drawn_on_stderr_and_silent_with_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _data_dir(tmp_path)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    drawn = Terminal()
    monkeypatch.setattr("sys.stderr", drawn)
    assert cli.main(["backup", "--data-dir", str(data), "--to", str(tmp_path / "a.tar.gz")]) == 0
    assert cli.main(["restore", "--from", str(tmp_path / "a.tar.gz"), "--data-dir", str(tmp_path / "r")]) == 0
    assert "backing up 6 files" in drawn.getvalue() and "unpacking a.tar.gz" in drawn.getvalue()
    assert "checking 6 files' sha256" in drawn.getvalue()

    quiet = Terminal()
    monkeypatch.setattr("sys.stderr", quiet)
    capsys.readouterr()
    assert cli.main(["backup", "--data-dir", str(data), "--to", str(tmp_path / "b.tar.gz"), "--json"]) == 0
    assert cli.main(["restore", "--from", str(tmp_path / "b.tar.gz"), "--verify-only", "--json"]) == 0
    assert quiet.getvalue() == ""
    assert [json.loads(line)["ok"] for line in capsys.readouterr().out.splitlines()] == [True, True]
