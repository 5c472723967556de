"""Durable writes and the cross-process lock, on a real folder with real processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from taxiops.fileio import exclusive_lock, write_atomically
from taxiops.tripfile import sha256_of


def test_a_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "production.json"
    target.write_text("old")

    write_atomically(target, "new ü")
    write_atomically(tmp_path / "booster.ubj", b"\x00\x01")

    assert target.read_text(encoding="utf-8") == "new ü"
    assert (tmp_path / "booster.ubj").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["booster.ubj", "production.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "card.json"
    target.write_text("old")

    with pytest.raises(UnicodeEncodeError):
        write_atomically(target, "\udcff")  # a lone surrogate cannot be encoded

    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]


def _hold(lock_file: Path, folder: Path, seconds: float) -> None:
    with exclusive_lock(lock_file):
        (folder / "taken").touch()
        time.sleep(seconds)
        (folder / "letting-go").touch()  # still inside the lock


def test_the_lock_excludes_another_process(tmp_path: Path) -> None:
    lock_file = tmp_path / ".lock"
    other = multiprocessing.get_context("spawn").Process(
        target=_hold, args=(lock_file, tmp_path, 0.5)
    )
    other.start()
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "taken").exists():
            assert time.monotonic() < deadline, "the other process never took the lock"
            time.sleep(0.01)
        with exclusive_lock(lock_file):
            # Were the lock not exclusive we would be here while the other still sleeps.
            assert (tmp_path / "letting-go").exists()
    finally:
        other.join(30)
    assert other.exitcode == 0


def test_sha256_of_matches_hashing_the_bytes(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    path = tmp_path / "green_tripdata_2023-03.parquet"
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()
