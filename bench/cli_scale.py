"""The CLI at scale: every command that reads a whole output, on 1M and 10M lines.

    python bench/cli_scale.py [--lines 1000000,10000000] [--first-run 1000000]
    python bench/cli_scale.py --before /path/to/old/checkout/src      # side by side

For each size it writes an input of simple lines and an output of realistic lines (about
700 bytes each, as `llmbatch run` writes them: an OpenAI chat body, usage, timing with an
attempt log, 3 % failed), then times each command as its own process and reads its peak RSS
(`wait4`): `plan`, the first run at 0 ms latency against the simulator (sizes in
`--first-run` only; the others use the synthetic output), a rerun of the finished run (twice:
the first one after the synthetic output appeared may build the sidecar index), `stats`,
`export` (JSONL, input order), `report`, and a rerun after a kill at 90 % (the output cut to
its first 90 % of lines and a torn line: the rerun sends the last 10 %).

With `--before SRC`, every command also runs with `PYTHONPATH=SRC` (another checkout) on its
own copy of the files, and the table shows both and their ratio. Targets (issue 24): a rerun
of a finished 1M-line run <= 1.5x `plan`; `stats` on 1M lines <= 3 s; a 10M-line input
checked and resumed in <= 500 MB peak.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from _sim import sim_reset, sim_stats, simulator

T0 = 1_800_000_000.0
RATE = 2000.0  # requests finished per second in the synthetic run


def make_input(path: Path, n: int) -> None:
    with open(path, "wb", buffering=1 << 20) as f:
        for i in range(n):
            f.write(b'{"id": "req-%d", "prompt": "q %d", "max_tokens": 8}\n' % (i, i))


def output_line(i: int, rng: random.Random) -> bytes:
    """One line as `llmbatch run` writes it (see `llmbatch.io.journal`)."""
    start = T0 + i / RATE
    wait, provider = rng.expovariate(20), rng.lognormvariate(-1.0, 0.5)
    log: list[list[object]] = [[round(wait, 6), round(provider, 6), 200]]
    backoff = 0.0
    if i % 20 == 0:
        backoff = 1.0
        log.insert(0, [0.0, 0.05, 429])
    duration = sum(float(a[0]) + float(a[1]) for a in log) + backoff  # type: ignore[arg-type]
    meta: dict[str, object] = {"duration": round(duration, 6), "attempts": len(log)}
    meta["cached"] = False
    response: dict[str, object] | None = None
    error: dict[str, object] | None = None
    if i % 33 == 0:
        error = {"code": "rate_limited", "message": "RateLimitError: too many requests"}
    else:
        response = {
            "status_code": 200,
            "request_id": f"req_{i:x}",
            "body": {
                "id": f"chatcmpl-{i:012x}",
                "object": "chat.completion",
                "created": int(start),
                "model": "gpt-4o-mini",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"A short answer {i}."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
            },
        }
        meta["usage"] = {"prompt_tokens": 120, "completion_tokens": 30}
        meta["cost"] = 0.000036
    meta |= {
        "started_at": round(start, 3),
        "finished_at": round(start + duration, 3),
        "wait": round(sum(float(a[0]) for a in log), 6),  # type: ignore[arg-type]
        "provider": round(sum(float(a[1]) for a in log), 6),  # type: ignore[arg-type]
        "backoff": backoff,
        "attempt_log": log,
    }
    line = {
        "id": f"batch_req_{uuid.UUID(int=rng.getrandbits(128)).hex}",
        "custom_id": f"req-{i}",
        "response": response,
        "error": error,
        "llmbatch": meta,
    }
    return orjson.dumps(line) + b"\n"


def make_output(path: Path, n: int) -> None:
    rng = random.Random(7)
    with open(path, "wb", buffering=1 << 20) as f:
        for i in range(n):
            f.write(output_line(i, rng))


def cut_at(path: Path, fraction: float) -> int:
    """Keep the first `fraction` of the lines and a torn one, as a kill -9 leaves a file."""
    lines = 0
    with open(path, "rb") as f:
        total = sum(1 for _ in f)
    keep = int(total * fraction)
    with open(path, "rb") as f:
        offset = 0
        for raw in f:
            if lines == keep:
                break
            offset += len(raw)
            lines += 1
    with open(path, "r+b") as f:
        f.truncate(offset)
        f.seek(offset)
        f.write(b'{"id":"batch_req_torn","custom_id":"req-')
    return total - keep


@dataclass
class Measure:
    seconds: float
    rss_mb: float
    code: int
    sent: int | None = None


def timed(args: list[str], src: str | None) -> Measure:
    """Seconds, peak RSS and exit code of one `llmbatch` process (printed as it ends, so a
    long run that is stopped still tells what it measured)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmbatch", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    found = Measure(elapsed, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status))
    print(
        f"  {src or 'this checkout'}: {args[0]} {elapsed:.1f} s, {found.rss_mb:.0f} MB", flush=True
    )
    return found


def measure_tree(
    src: str | None,
    workdir: Path,
    inp: Path,
    synthetic: Path,
    n: int,
    url: str,
    first_run: bool,
    only: set[str],
) -> dict[str, Measure]:
    """Every measure for one checkout (`src`: its PYTHONPATH; None: this one's), or those
    named in `only` (plan, rerun, stats, export, report, kill)."""

    def wanted(name: str) -> bool:
        return not only or name in only

    workdir.mkdir()
    out = workdir / "out.jsonl"
    run = [
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
        "128",
    ]
    results: dict[str, Measure] = {}
    if wanted("plan"):
        results["plan"] = timed(["plan", str(inp), "--model", "sim"], src)

    def sent() -> int:
        count = int(sim_stats(url)["received"])  # type: ignore[call-overload]
        sim_reset(url)
        return count

    sim_reset(url)
    if first_run:
        results["first run (0 ms)"] = timed(run, src)
        results["first run (0 ms)"].sent = sent()
    else:
        shutil.copyfile(synthetic, out)
    for name in ("rerun, finished (1st)", "rerun, finished"):
        if wanted("rerun"):
            results[name] = timed(run, src)
            results[name].sent = sent()
    if wanted("stats"):
        results["stats"] = timed(["stats", str(out)], src)
    if wanted("export"):
        results["export (jsonl, input order)"] = timed(
            ["export", str(out), "-o", str(workdir / "table.jsonl"), "--input", str(inp)], src
        )
        (workdir / "table.jsonl").unlink(missing_ok=True)
    if wanted("report"):
        results["report"] = timed(["report", str(out), "-o", str(workdir / "report.html")], src)
    if not wanted("kill"):
        shutil.rmtree(workdir)
        return results
    left = cut_at(out, 0.9)
    results[f"rerun after kill at 90% ({left:,} to send)"] = timed(run, src)
    results[f"rerun after kill at 90% ({left:,} to send)"].sent = sent()
    with open(out, "rb") as f:
        lines = sum(1 for _ in f)
    if lines != n:
        raise SystemExit(f"{src or 'this checkout'}: {lines:,} output lines, expected {n:,}")
    shutil.rmtree(workdir)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", default="1000000,10000000")
    parser.add_argument(
        "--first-run", default="1000000", help="sizes whose first run goes through the simulator"
    )
    parser.add_argument("--before", metavar="SRC", help="another checkout's src/, side by side")
    parser.add_argument("--tmp", default=None, help="where to write the files (default: $TMPDIR)")
    parser.add_argument(
        "--only", default="", help="measure only these: plan,rerun,stats,export,report,kill"
    )
    args = parser.parse_args()
    sizes = [int(x) for x in args.lines.split(",")]
    first_sizes = {int(x) for x in args.first_run.split(",") if x}
    only = {x for x in args.only.split(",") if x}
    trees: list[tuple[str, str | None]] = [("after", None)]
    if args.before:
        trees.insert(0, ("before", args.before))
    console = Console(width=160)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp, simulator("--latency-ms", "0") as url:
        for n in sizes:
            inp, synthetic = Path(tmp) / f"in-{n}.jsonl", Path(tmp) / f"synthetic-{n}.jsonl"
            make_input(inp, n)
            first = n in first_sizes
            if not first:
                make_output(synthetic, n)
            found = {
                name: measure_tree(
                    src, Path(tmp) / f"{name}-{n}", inp, synthetic, n, url, first, only
                )
                for name, src in trees
            }
            synthetic.unlink(missing_ok=True)
            inp.unlink()
            table = Table(title=f"{n:,} lines: seconds and peak RSS per command")
            table.add_column("command")
            for name, _ in trees:
                table.add_column(f"{name} s", justify="right")
                table.add_column(f"{name} MB", justify="right")
            if args.before:
                table.add_column("time after/before", justify="right")
                table.add_column("RSS after/before", justify="right")
            table.add_column("requests sent", justify="right")
            table.add_column("exit", justify="right")
            for command, last in found["after"].items():
                row = [command]
                for name, _ in trees:
                    m = found[name].get(command)
                    row += ["-", "-"] if m is None else [f"{m.seconds:.1f}", f"{m.rss_mb:.0f}"]
                if args.before:
                    old = found["before"].get(command)
                    if old is None:  # the torn-tail label counts lines, the same on both
                        old = next(
                            (m for k, m in found["before"].items() if k[:20] == command[:20]),
                            None,
                        )
                    row += (
                        ["-", "-"]
                        if old is None
                        else [
                            f"{last.seconds / old.seconds:.2f}",
                            f"{last.rss_mb / old.rss_mb:.2f}",
                        ]
                    )
                row += ["-" if last.sent is None else f"{last.sent:,}", str(last.code)]
                table.add_row(*row)
            console.print(table)
            after = found["after"]
            if "plan" in after and "rerun, finished" in after:
                ratio = after["rerun, finished"].seconds / after["plan"].seconds
                console.print(f"rerun when finished / plan (after): {ratio:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
