"""Helpers shared by test files: input and output files, waiting for a condition."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any


def write_requests(path: Path, ids: list[str], *, max_tokens: int = 16, **extra: Any) -> None:
    """A JSONL input: one chat prompt per id."""
    lines = [
        json.dumps({"id": rid, "prompt": f"question {rid}", "max_tokens": max_tokens, **extra})
        for rid in ids
    ]
    path.write_text("".join(line + "\n" for line in lines))


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ids_once(path: Path) -> Counter[str]:
    """The ids of an output file, asserting none appears twice."""
    counts = Counter(rec["custom_id"] for rec in read_lines(path))
    assert not counts or counts.most_common(1)[0][1] == 1, counts.most_common(3)
    return counts


def wait_for(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def llmbatch_argv(*args: str) -> list[str]:
    """The command line of an `llmbatch` process from this checkout (for subprocess)."""
    import sys

    return [sys.executable, "-m", "llmbatch", *args]
