"""Replacing a file whole, and naming an OS error, the one way the package does both.

write_atomic(Path("out.batches.json"), data)   # the old file or the new one, never half
os_reason(exc)                                 # "[Errno 28] No space left on device"
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["os_reason", "write_atomic"]


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file, whole:
    a temp file beside it, fsync'ed, renamed over it, and the directory fsync'ed."""
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    # A fixed name: the temp file a crash left is reused and renamed away by the next save.
    tmp = target.with_name(target.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def os_reason(exc: OSError) -> str:
    """`[Errno 28] No space left on device`, without the file name Python may append."""
    return f"[Errno {exc.errno}] {exc.strerror}" if exc.errno else str(exc)
