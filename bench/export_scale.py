"""`llmbatch export` at scale: a 1,000,000-line output back into input order.

    python bench/export_scale.py [--lines 1000000] [--formats jsonl,csv,parquet]
        [--joins csv,parquet]

Writes an output file of schema results (about 600 bytes a line, the ids in a shuffled
order, as completion order is) and the CSV of input rows, then times `llmbatch export ...
--join rows.csv` per format in its own process and reads its peak RSS (`wait4`). A smaller
run (a tenth of the lines) is measured too: memory must not grow with the file (the index is
8 bytes a line; the rest is the interpreter and one row group). Target: peak RSS <= 250 MB
at 1,000,000 lines. `--joins` also joins onto the same rows as Parquet (read a record batch at
a time; its columns keep their types in a Parquet export).
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


def make_files(directory: Path, n: int) -> tuple[Path, Path]:
    out, rows = directory / f"out-{n}.jsonl", directory / f"rows-{n}.csv"
    order = list(range(n))
    random.Random(n).shuffle(order)
    with open(out, "wb") as f:
        for i in order:
            parsed = {
                "label": ("spam", "ham")[i % 2],
                "score": round((i % 997) / 997, 3),
                "n": i % 10,
                "meta": {"lang": "en", "source": f"s{i % 13}"},
                "tags": ["a", "b"],
            }
            content = orjson.dumps(parsed).decode()
            line = {
                "id": f"batch_req_{i:032x}",
                "custom_id": f"row{i}",
                "response": {
                    "status_code": 200,
                    "request_id": f"req_{i:016x}",
                    "body": {
                        "id": f"chatcmpl-{i:016x}",
                        "object": "chat.completion",
                        "model": "m",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 30, "completion_tokens": 25},
                    },
                },
                "error": None,
                "llmbatch": {
                    "duration": 0.5,
                    "attempts": 1,
                    "cached": False,
                    "usage": {"prompt_tokens": 30, "completion_tokens": 25},
                    "parsed": parsed,
                },
            }
            f.write(orjson.dumps(line) + b"\n")
    with open(rows, "w") as f:
        f.write("id,text\n")
        for i in range(n):
            f.write(f"row{i},some input text for row {i}\n")
    return out, rows


def parquet_rows(rows: Path) -> Path:
    """The rows CSV as Parquet, written by a child process (see `export`: the parent stays
    small, so a child's peak RSS is its own)."""
    target = rows.with_suffix(".parquet")
    code = (
        "import sys, pyarrow.csv as c, pyarrow.parquet as q; "
        "q.write_table(c.read_csv(sys.argv[1]), sys.argv[2], row_group_size=100_000)"
    )
    subprocess.run([sys.executable, "-c", code, str(rows), str(target)], check=True)
    return target


def export(out: Path, rows: Path, target: Path) -> tuple[float, float, int]:
    """(seconds, peak RSS MB, exit code) of one `llmbatch export` process."""
    start = time.perf_counter()
    command = ["export", str(out), "-o", str(target), "--join", str(rows)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmbatch", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--formats", default="jsonl,csv,parquet")
    parser.add_argument("--joins", default="csv,parquet")
    args = parser.parse_args()
    table = Table(title="llmbatch export --join (input order)")
    for col in ("lines", "join", "format", "output MB", "seconds", "lines/s", "peak RSS MB",
                "exit"):  # fmt: skip
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted({max(1, args.lines // 10), args.lines}):
            out, rows = make_files(Path(tmp), n)
            size = out.stat().st_size / 2**20
            for join in args.joins.split(","):
                source = parquet_rows(rows) if join == "parquet" else rows
                for fmt in args.formats.split(","):
                    target = Path(tmp) / f"export-{n}.{fmt}"
                    seconds, rss, code = export(out, source, target)
                    table.add_row(
                        f"{n:,}",
                        join,
                        fmt,
                        f"{size:,.0f}",
                        f"{seconds:.1f}",
                        f"{n / seconds:,.0f}",
                        f"{rss:.0f}",
                        str(code),
                    )
                    target.unlink(missing_ok=True)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
