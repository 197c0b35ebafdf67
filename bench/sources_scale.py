"""`--rows` at scale: a 1,000,000-row table read in each format, in bounded memory.

    python bench/sources_scale.py [--rows 1000000] [--formats csv,jsonl,parquet,...]

Writes the same rows (an id, a title, a 300-character abstract and a 1 KB column the template
does not use) as CSV, JSONL, Parquet (one file, and a folder of 8), Arrow IPC and a Hugging Face
dataset folder (and reads the Parquet file through a `duckdb:` query too), then times
`llmbatch plan --template ... --rows FILE` per format in its own process (the plan reads every
row once, as a run's check does, and counts the tokens; nothing is sent) and reads its peak
RSS (`wait4`; the bench itself holds no table, so the number is the plan's own). A tenth of
the rows is measured too: memory must not grow with the table. Ratios are against CSV, the
format `--rows` read before.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

TEMPLATE = "Title: {title}\n\n{abstract}\n\nLabel this paper."
CHUNK = 50_000
LOREM = "lorem ipsum dolor sit amet " * 12


def chunks(n: int) -> list[tuple[int, int]]:
    return [(lo, min(n, lo + CHUNK)) for lo in range(0, n, CHUNK)]


def batch(lo: int, hi: int) -> Any:
    import pyarrow as pa

    ids = range(lo, hi)
    return pa.record_batch(
        {
            "id": [f"row{i}" for i in ids],
            "title": [f"On the {i % 977}th property of batch {i}" for i in ids],
            "abstract": [(f"Abstract {i}: " + LOREM)[:300] for i in ids],
            "body": ["x" * 1024 for _ in ids],
        }
    )


def write_csv(path: Path, n: int) -> Path:
    import pyarrow.csv as pcsv

    with pcsv.CSVWriter(path, batch(0, 1).schema) as writer:
        for lo, hi in chunks(n):
            writer.write_batch(batch(lo, hi))
    return path


def write_jsonl(path: Path, n: int) -> Path:
    import orjson

    with open(path, "wb") as f:
        for lo, hi in chunks(n):
            for row in batch(lo, hi).to_pylist():
                f.write(orjson.dumps(row) + b"\n")
    return path


def write_parquet(path: Path, n: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # pyarrow's defaults, as a user's file would have them (row groups of up to 1M rows).
    pq.write_table(pa.Table.from_batches([batch(lo, hi) for lo, hi in chunks(n)]), path)
    return path


def write_parquet_dir(path: Path, n: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir()
    parts = 8
    size = -(-n // parts)
    for k in range(parts):
        lo, hi = k * size, min(n, (k + 1) * size)
        if lo < hi:
            table = pa.Table.from_batches([batch(lo + a, lo + b) for a, b in chunks(hi - lo)])
            pq.write_table(table, path / f"part-{k:05d}.parquet")
    return path


def write_arrow(path: Path, n: int) -> Path:
    import pyarrow as pa

    with pa.ipc.new_file(path, batch(0, 1).schema) as writer:
        for lo, hi in chunks(n):
            writer.write_batch(batch(lo, hi))
    return path


def write_dataset(path: Path, n: int) -> Path:
    import datasets
    import pyarrow as pa

    table = pa.Table.from_batches([batch(lo, hi) for lo, hi in chunks(n)])
    datasets.Dataset(table).save_to_disk(str(path))
    return path


WRITERS: dict[str, tuple[str, Callable[[Path, int], Path]]] = {
    "csv": ("rows.csv", write_csv),
    "jsonl": ("rows.jsonl", write_jsonl),
    "parquet": ("rows.parquet", write_parquet),
    "parquet-dir": ("rows-parquet", write_parquet_dir),
    "arrow": ("rows.arrow", write_arrow),
    "hf-dataset": ("rows-dataset", write_dataset),
    # The Parquet file again, through `--rows "duckdb:SELECT * FROM 'FILE'"`.
    "duckdb": ("rows-duck.parquet", write_parquet),
}


def size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
    return path.stat().st_size / 2**20


def plan(rows: str, out: Path) -> tuple[float, float, int]:
    """(seconds, peak RSS MB, exit code) of one `llmbatch plan` process over `rows`."""
    command = [
        "plan", "--template", TEMPLATE, "--rows", rows, "-o", str(out),
        "--model", "gpt-4o-mini", "--max-tokens", "50",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmbatch", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(err.decode()[-2000:], file=sys.stderr)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, code


def main() -> None:
    if sys.argv[1:2] == ["--write"]:
        fmt, path, n = sys.argv[2:5]
        WRITERS[fmt][1](Path(path), int(n))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", default=",".join(WRITERS))
    args = parser.parse_args()
    formats = args.formats.split(",")
    table = Table(title="llmbatch plan --template ... --rows FILE (every row read once)")
    for col in ("rows", "format", "size MB", "seconds", "rows/s", "peak RSS MB", "x CSV time",
                "x CSV RSS", "exit"):  # fmt: skip
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted({max(1, args.rows // 10), args.rows}):
            base: tuple[float, float] | None = None
            for fmt in formats:
                path = Path(tmp) / f"{n}-{WRITERS[fmt][0]}"
                # Written by a child: a process forked from a parent that held the tables
                # would report the parent's memory as its own peak (ru_maxrss counts the
                # pages shared before exec).
                subprocess.run(
                    [sys.executable, __file__, "--write", fmt, str(path), str(n)], check=True
                )
                rows = f"duckdb:SELECT * FROM '{path}'" if fmt == "duckdb" else str(path)
                seconds, rss, code = plan(rows, Path(tmp) / "out.jsonl")
                if fmt == "csv":
                    base = (seconds, rss)
                ratio_t = f"{seconds / base[0]:.2f}" if base else "-"
                ratio_m = f"{rss / base[1]:.2f}" if base else "-"
                table.add_row(
                    f"{n:,}", fmt, f"{size_mb(path):,.0f}", f"{seconds:.1f}",
                    f"{n / seconds:,.0f}", f"{rss:.0f}", ratio_t, ratio_m, str(code),
                )  # fmt: skip
                subprocess.run(["rm", "-rf", str(path)], check=True)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
