"""Real filesystems that fail: a tiny tmpfs that fills up, a read-only one. Needs root.

    with tiny_fs(tmp_path) as disk:        # 64 KiB; the test is skipped where mount is refused
        ...

Both are real kernel filesystems, so the errors are the ones users meet (ENOSPC, EROFS).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def _mount(where: Path, options: str) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()!r}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def tiny_fs(tmp_path: Path, size: str = "64k") -> contextlib.AbstractContextManager[Path]:
    """A small tmpfs under `tmp_path`: a disk that really fills up (ENOSPC)."""
    return _mount(tmp_path / "tiny", f"size={size}")


def readonly_fs(tmp_path: Path) -> contextlib.AbstractContextManager[Path]:
    """A read-only tmpfs (EROFS): unlike a chmod, it stops root too."""
    return _mount(tmp_path / "ro", "ro,size=64k")


def fill(path: Path) -> None:
    """Write `path` until its filesystem is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 512)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
