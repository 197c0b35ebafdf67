"""`llmbatch report` at scale: time and peak memory for outputs of growing size.

    python bench/report_scale.py [--lines 10000,100000,1000000]

Writes an output file of realistic lines (an OpenAI chat body, usage, timing with an attempt
log; 3 % failed, 5 % retried after a 429, a few ids written twice as a crashed --retry-failed
leaves them), then runs `llmbatch report` on it as its own process and measures wall time and
peak RSS (`wait4`). Target: peak RSS flat in the number of lines (bounded aggregation), well
under 200 MB at 1,000,000 lines.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from llmbatch import BatchResult, CompletionResponse, RateLimitError, Usage
from llmbatch.io.journal import result_line
from llmbatch.types import Timing

T0 = 1_800_000_000.0
RATE = 50.0  # requests finished per second in the synthetic run


def body(i: int) -> dict[str, object]:
    return {
        "id": f"chatcmpl-{i:012x}",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"A short summary number {i}."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
    }


def make_output(path: Path, n: int) -> None:
    rng = random.Random(7)
    with open(path, "wb", buffering=1 << 20) as f:
        for i in range(n):
            start = T0 + i / RATE
            provider = rng.lognormvariate(-1.0, 0.5)
            wait = rng.expovariate(20)
            log: tuple[tuple[float, float, int | str], ...] = ((wait, provider, 200),)
            backoff = 0.0
            if i % 20 == 0:
                backoff = 1.0
                log = ((0.0, 0.05, 429), *log)
            duration = sum(a[0] + a[1] for a in log) + backoff
            timing = Timing(
                start,
                start + duration,
                sum(a[0] for a in log),
                sum(a[1] for a in log),
                backoff,
                log,
            )
            if i % 33 == 0:
                result = BatchResult(
                    f"req-{i}", error=RateLimitError(), duration=duration, attempts=len(log)
                )
            else:
                result = BatchResult(
                    f"req-{i}",
                    response=CompletionResponse(
                        "x", usage=Usage(120, 30), raw=body(i), request_id=f"req_{i:x}"
                    ),
                    duration=duration,
                    attempts=len(log),
                    cost=0.000036,
                )
            result.timing = timing
            line = result_line(result)
            f.write(line)
            if i % 10_000 == 5:  # an id redone, its old line not compacted away yet
                f.write(line)


def run_report(out: Path, page: Path) -> tuple[float, float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmbatch", "report", str(out), "-o", str(page)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", default="10000,100000,1000000")
    sizes = [int(x) for x in parser.parse_args().lines.split(",")]
    table = Table(title="llmbatch report: time and peak memory by output size")
    for col in ("lines", "output MB", "report s", "lines/s", "peak RSS MB", "report MB"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            out, page = Path(tmp) / f"out-{n}.jsonl", Path(tmp) / f"report-{n}.html"
            make_output(out, n)
            seconds, rss, code = run_report(out, page)
            if code != 0:
                raise SystemExit(f"llmbatch report failed on {n} lines (exit {code})")
            html = page.read_text()
            start = html.index('id="llmbatch-data">') + len('id="llmbatch-data">')
            data = orjson.loads(html[start : html.index("</script>", start)])
            assert data["summary"]["requests"] == n, data["summary"]["requests"]
            table.add_row(
                f"{n:,}",
                f"{out.stat().st_size / 1e6:,.0f}",
                f"{seconds:.1f}",
                f"{n / seconds:,.0f}",
                f"{rss:.0f}",
                f"{page.stat().st_size / 1e6:.1f}",
            )
            out.unlink()
    Console().print(table)


if __name__ == "__main__":
    main()
