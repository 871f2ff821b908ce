"""Real filesystems for the fault tests: a small tmpfs (full after a few hundred KB) and one remounted
read-only. Mounting needs root; elsewhere the tests that need one skip, saying so."""

import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(folder: Path, size: str):
    """A tmpfs of `size` (mount's syntax: 256k) mounted on `folder`, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a small tmpfs (a real full disk) needs root to mount it: run the tests as root")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): the container lacks CAP_SYS_ADMIN")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], capture_output=True)


def remount_read_only(folder: Path, within_s: float = 10) -> None:
    """Make the tmpfs on `folder` read-only; a file being written there makes mount refuse (busy): retried."""
    deadline = time.monotonic() + within_s
    while subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, f"could not remount {folder} read-only"
        time.sleep(0.05)


@pytest.fixture
def read_only_folder(tmp_path):
    with tmpfs(tmp_path / "read-only", "1m") as folder:
        remount_read_only(folder)
        yield folder
