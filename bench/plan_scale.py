"""`llmbatch plan` at scale: a million-line input planned in seconds.

    python bench/plan_scale.py [--lines 1000000]

Writes an input of short simple lines (one model, max_tokens set) and times `llmbatch plan` as
a user runs it (a subprocess: start-up, the full first pass, pricing, the report), with and
without per-minute limits (with them, every line's token estimate is also checked against
them, as `run` does). Prints wall time, lines per second and peak RSS. Target: under 30 s per
million lines on one core; memory bounded by the duplicate-id check (a set of hashes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table


def plan(args: list[str]) -> tuple[float, float, int, bytes]:
    """(seconds, peak RSS MB, exit code, stdout) of one `llmbatch plan` process."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmbatch", "plan", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    return elapsed, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    table = Table(title="llmbatch plan: time to plan an input (subprocess, wall clock)")
    for column in ("lines", "flags", "seconds", "lines/s", "peak RSS MB", "requests planned"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in.jsonl"
        sizes = sorted({min(100_000, args.lines), args.lines})
        for n in sizes:
            with open(inp, "wb") as f:
                for i in range(n):
                    line = {
                        "id": f"req-{i}",
                        "prompt": f"Summarize the following note {i}: the quick brown fox.",
                        "max_tokens": 64,
                    }
                    f.write(orjson.dumps(line) + b"\n")
            for flags in (["--model", "gpt-4o-mini"], ["--model", "gpt-4o-mini", "--tpm", "2e6"]):
                seconds, rss, code, out = plan([str(inp), *flags, "--json"])
                if code != 0:
                    raise SystemExit(f"plan exited {code}")
                planned = orjson.loads(out)["requests"]
                table.add_row(
                    f"{n:,}",
                    " ".join(flags[2:]) or "-",
                    f"{seconds:.1f}",
                    f"{n / seconds:,.0f}",
                    f"{rss:.0f}",
                    f"{planned:,}",
                )
    Console().print(table)


if __name__ == "__main__":
    main()
