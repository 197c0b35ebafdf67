"""The CLI at scale: many simple lines against the simulator at 0 ms latency.

    python bench/cli_scale.py [--lines 100000] [--concurrency 128]

Measures the first run (req/s, peak RSS of the `llmbatch run` process) and a rerun of the
same command after completion (everything already done: time, and requests sent, which must
be 0). Targets: peak RSS <= 200 MB; rerun <= 3 s per 100,000 lines.
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

from _sim import sim_reset, sim_stats, simulator


def run_cli(args: list[str]) -> tuple[float, float, int]:
    """(seconds, peak RSS MB, exit code) of one `llmbatch run` process."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmbatch", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    return elapsed, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=128)
    args = parser.parse_args()
    n = args.lines
    with tempfile.TemporaryDirectory() as tmp, simulator("--latency-ms", "0") as url:
        inp, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        with open(inp, "wb") as f:
            for i in range(n):
                f.write(orjson.dumps({"id": f"req-{i}", "prompt": f"q {i}", "max_tokens": 8}))
                f.write(b"\n")
        cmd = [
            "run",
            str(inp),
            "-o",
            str(out),
            "--base-url",
            url + "/v1",
            "--model",
            "sim",
            "--no-progress",
            "--concurrency",
            str(args.concurrency),
        ]
        first_s, first_rss, first_rc = run_cli(cmd)
        sent_first = int(sim_stats(url)["received"])  # type: ignore[call-overload]
        sim_reset(url)
        rerun_s, rerun_rss, rerun_rc = run_cli(cmd)
        sent_rerun = int(sim_stats(url)["received"])  # type: ignore[call-overload]
        with open(out, "rb") as f:
            out_lines = sum(1 for _ in f)
    table = Table(title=f"llmbatch run over {n:,} simple lines (simulator at 0 ms latency)")
    for col in ("run", "seconds", "req/s", "peak RSS MB", "requests sent", "exit", "s per 100k"):
        table.add_column(col, justify="right")
    table.add_row(
        "first",
        f"{first_s:.1f}",
        f"{n / first_s:,.0f}",
        f"{first_rss:.0f}",
        f"{sent_first:,}",
        str(first_rc),
        f"{first_s * 100_000 / n:.2f}",
    )
    table.add_row(
        "rerun (all done)",
        f"{rerun_s:.2f}",
        "-",
        f"{rerun_rss:.0f}",
        f"{sent_rerun:,}",
        str(rerun_rc),
        f"{rerun_s * 100_000 / n:.2f}",
    )
    Console(width=150).print(table)
    print(f"output lines: {out_lines:,} (expected {n:,})")


if __name__ == "__main__":
    main()
