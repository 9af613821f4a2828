"""The write-ahead log: what replay may drop, what it must refuse, and what it makes durable."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cookbook.devserver.state import DurableState
from cookbook.devserver.wal import CorruptLogError, WriteAheadLog

GOOD = b'{"now":1,"tick":true}\n'


def _write_log(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


@pytest.mark.parametrize(
    "torn",
    [
        b'{"now":3,"req":{"kind":"promise.cr',  # a crash mid-append: no newline
        b"\x00\x00\x00\x00",  # a machine crash: the size grew, the data never landed
        b'{"now":3,"req":{"kind"\n',  # unreadable, but nothing readable after it
    ],
)
def test_a_torn_last_record_is_truncated(tmp_path: Path, torn: bytes) -> None:
    path = tmp_path / "wal.jsonl"
    _write_log(path, GOOD * 2 + torn)

    records = list(WriteAheadLog(path).replay())

    assert records == [{"now": 1, "tick": True}] * 2
    assert path.read_bytes() == GOOD * 2


def test_a_bad_record_in_the_middle_refuses_to_replay_and_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wal.jsonl"
    damaged = GOOD + b'{"now":2,"req":{"ki\x00\x00\n' + GOOD
    _write_log(path, damaged)

    with pytest.raises(CorruptLogError) as refused:
        list(WriteAheadLog(path).replay())

    assert str(path) in str(refused.value)
    assert f"offset {len(GOOD)}" in str(refused.value)
    assert path.read_bytes() == damaged


def test_the_dev_server_will_not_start_on_a_log_damaged_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "data" / "wal.jsonl"
    damaged = GOOD * 3 + b"garbage\n" + GOOD
    _write_log(path, damaged)

    finished = subprocess.run(
        [sys.executable, "-m", "cookbook.devserver", "--data-dir", str(path.parent), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode != 0
    assert str(path) in finished.stderr
    assert f"offset {3 * len(GOOD)}" in finished.stderr
    assert path.read_bytes() == damaged


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(device, inode) of each directory fsynced from now on."""
    synced_directories: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            synced_directories.append((info.st_dev, info.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return synced_directories


def _identity(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


def test_creating_the_log_fsyncs_the_data_directory_and_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced_directories = _record_fsyncs(monkeypatch)
    data_dir = tmp_path / "fresh"

    state = DurableState(data_dir)
    state.open()
    state.close()

    assert _identity(data_dir) in synced_directories  # the new log's name
    assert _identity(tmp_path) in synced_directories  # the new data directory's name


def test_reopening_an_existing_log_fsyncs_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    _write_log(data_dir / "wal.jsonl", GOOD)
    synced_directories = _record_fsyncs(monkeypatch)

    state = DurableState(data_dir)
    state.open()
    state.close()

    assert synced_directories == []
