"""Start `llmbatch simulate` in its own process for a benchmark, and read its counters."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator


@contextlib.contextmanager
def simulator(*args: str) -> Iterator[str]:
    """Yield the base URL of a simulator started with `args`; stop it afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmbatch", "simulate", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"simulator did not start: {line!r}")
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def sim_stats(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url + "/stats") as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def sim_reset(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url + "/stats/reset", method="POST")).close()
