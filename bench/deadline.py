"""Finishing by a deadline: cost and punctuality of `llmbatch run --finish-by`, per lane mix.

    python bench/deadline.py [--requests 20000] [--median 60] [--seeds 1 2 3]
                             [--lanes batch flex0 flex30 flex60] [--factors 0.5 1 2]

20,000 requests through the CLI, as a user runs it (defaults, plus the rate limit the user
knows: --rpm), against a simulator whose batches finish after a heavy-tailed delay
(lognormal, median `--median` seconds, sigma 1: one batch in ten takes 3.6x the median or
more) drawn per batch and seed. The lanes: `batch` (batch API and standard realtime), and
`flexN` (the same plus `--service-tier flex`, the simulator refusing N% of flex requests for
capacity; flex answers 3x slower than standard). The deadline is 0.5x, 1x and 2x the median
batch time. For each run: the lines each lane answered, the cost (every dollar the output
records, answers bought twice around a switch included) against all-realtime and all-batch
for the same tokens, and whether the deadline was met (the run ended before it).
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

from _sim import simulator

MODEL = "gpt-4o-mini"
PRICE_IN, PRICE_OUT = 0.15, 0.60  # USD per 1M tokens, realtime (genai-prices' figures)
RPM = 120_000  # the simulator's limit, given to the CLI as a user gives theirs


def write_input(path: Path, n: int) -> None:
    with path.open("wb") as f:
        for i in range(n):
            line = {"id": f"r{i}", "prompt": f"Classify item {i}: " + "text " * 30}
            f.write(orjson.dumps(line | {"max_tokens": 16}) + b"\n")


def run_one(inp: Path, out: Path, url: str, seconds: float, *extra: str) -> tuple[float, str, int]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["OPENAI_API_KEY"] = "sk-bench"
    started = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmbatch",
            "run",
            str(inp),
            "-o",
            str(out),
            "--base-url",
            url + "/v1",
            "--model",
            MODEL,
            "--rpm",
            str(RPM),
            "--finish-by",
            f"{seconds:.0f}s",
            "--poll-interval",
            "1",
            "--no-progress",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds * 4 + 300,
    )
    return time.time() - started, proc.stderr, proc.returncode


def costs(out: Path) -> tuple[float, float, float, int, int, int]:
    """(paid, all-realtime, all-batch, answered by batch, by flex, by standard realtime)."""
    paid = realtime = 0.0
    by_batch = by_flex = by_realtime = 0
    for raw in out.read_bytes().splitlines():
        rec = orjson.loads(raw)
        meta = rec["llmbatch"]
        usage = meta.get("usage") or {}
        tokens_in, tokens_out = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        realtime += (tokens_in * PRICE_IN + tokens_out * PRICE_OUT) / 1e6
        # The output holds every dollar: a line's own cost, plus what the lines it replaced
        # cost (`extra_cost`: an answer bought twice around a switch, kept as one line).
        paid += (meta.get("cost") or 0.0) + (meta.get("extra_cost") or 0.0)
        if meta.get("batch_api"):
            by_batch += 1
        elif meta.get("service_tier") == "flex":
            by_flex += 1
        else:
            by_realtime += 1
    return paid, realtime, realtime / 2, by_batch, by_flex, by_realtime


def lane_args(lane: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(simulator args, CLI args) for a lane mix: "batch", or "flexN" (N% flex refusals)."""
    if lane == "batch":
        return (), ()
    refusals = int(lane.removeprefix("flex")) / 100
    return ("--flex-refusal-rate", str(refusals)), ("--service-tier", "flex")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--median", type=float, default=60.0, help="median batch time, seconds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--factors", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument(
        "--lanes", nargs="+", default=["batch", "flex0", "flex30", "flex60"],
        help="batch, or flexN: flex too, N%% of flex requests refused",
    )  # fmt: skip
    args = ap.parse_args()
    table = Table(title=f"--finish-by, {args.requests:,} requests, median batch {args.median:g}s")
    for col in (
        "lanes", "deadline", "seed", "batch / flex / standard lines", "wall s", "met",
        "cost / all-realtime", "cost / all-batch",
    ):  # fmt: skip
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in.jsonl"
        write_input(inp, args.requests)
        for lane in args.lanes:
            sim_extra, cli_extra = lane_args(lane)
            for factor in args.factors:
                for seed in args.seeds:
                    seconds = factor * args.median
                    out = Path(tmp) / f"out-{lane}-{seed}-{factor}.jsonl"
                    # The batch's own time is 2 s; the delay (median - 2 s) is drawn per batch.
                    sim_args = (
                        "--latency-ms", "20", "--rpm", str(RPM), "--seed", str(seed),
                        "--batch-seconds", "2", "--batch-delay-median", str(args.median - 2),
                        "--batch-expire-seconds", str(args.median * 50), *sim_extra,
                    )  # fmt: skip
                    with simulator(*sim_args) as url:
                        wall, stderr, code = run_one(inp, out, url, seconds, *cli_extra)
                    if code != 0:
                        print(stderr[-3000:], file=sys.stderr)
                        raise SystemExit(f"run failed with exit code {code}")
                    paid, realtime, batch, by_batch, by_flex, by_rt = costs(out)
                    row = (
                        lane,
                        f"{factor:g}x ({seconds:.0f}s)",
                        str(seed),
                        f"{by_batch:,} / {by_flex:,} / {by_rt:,}",
                        f"{wall:.1f}",
                        "met" if wall <= seconds else f"missed by {wall - seconds:.1f}s",
                        f"{paid / realtime:.2f}",
                        f"{paid / batch:.2f}",
                    )
                    table.add_row(*row)
                    print(" | ".join(row), file=sys.stderr)  # as it goes: a run takes minutes
    Console().print(table)


if __name__ == "__main__":
    main()
