"""OpenAI's enqueued-token limit: a batch run over it, before and after admission.

    python bench/enqueued.py [--requests 20000] [--per-batch 1000] [--limit 200000]
                             [--before /path/to/older/src]

One simulator (`--batch-enqueued-tokens LIMIT`: a batch created while the model's live batches
hold more is created, then fails with `token_limit_exceeded`, as OpenAI's does) and the CLI as
a user runs it (`--batch-api`, batches of `--per-batch`), side by side in one run:

- `before`: the CLI from another source tree (`--before`, e.g. the main branch before this
  change), if given: refused batches fail their lines;
- `learned`: no flag; the limit is learned from the first refusal;
- `learned, one batch`: no flag and the provider's caps: one batch of all the requests, refused
  alone, is cut into batches under the limit;
- `given`: `--batch-enqueued-tokens LIMIT`: batches wait for room, none is refused;
- `deadline`: `--finish-by 10m` with the flag (the deadline splits the work into ~20 batches).

For each: wall seconds, batches created and refused, lines answered at the batch price and
failed, and the most tokens the simulator saw live at once against the limit.
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

MODEL = "gpt-4o-mini"


def write_input(path: Path, n: int) -> None:
    with path.open("wb") as f:
        for i in range(n):
            line = {"id": f"r{i}", "prompt": f"Classify item {i}: " + "text " * 30}
            f.write(orjson.dumps(line | {"max_tokens": 16}) + b"\n")


def run_cli(inp: Path, out: Path, url: str, src: str | None, *extra: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["OPENAI_API_KEY"] = "sk-bench"
    if src is not None:
        env["PYTHONPATH"] = src
    command = [
        sys.executable, "-m", "llmbatch", "run", str(inp), "-o", str(out),
        "--base-url", url + "/v1", "--model", MODEL, "--poll-interval", "0.5",
        "--no-progress", *extra,
    ]  # fmt: skip
    started = time.time()
    subprocess.run(
        command,
        capture_output=True,
        env=env,
        timeout=1800,
        check=False,
    )
    return time.time() - started


def lines(out: Path) -> tuple[int, int]:
    """(answered through a batch, failed)."""
    batch = failed = 0
    for raw in out.read_bytes().splitlines() if out.exists() else ():
        rec = orjson.loads(raw)
        if rec.get("error"):
            failed += 1
        elif rec["llmbatch"].get("batch_api"):
            batch += 1
    return batch, failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--per-batch", type=int, default=1_000)
    ap.add_argument("--limit", type=int, default=200_000)
    ap.add_argument("--before", help="a source tree (…/src) whose CLI runs the `before` row")
    args = ap.parse_args()
    limit = str(args.limit)
    per_batch = ("--batch-api", "--batch-max-requests", str(args.per_batch))
    modes: list[tuple[str, str | None, tuple[str, ...]]] = []
    if args.before:
        modes.append(("before", args.before, per_batch))
    modes += [
        ("learned", None, per_batch),
        ("learned, one batch", None, ("--batch-api",)),
        ("given", None, (*per_batch, "--batch-enqueued-tokens", limit)),
        ("deadline", None, ("--finish-by", "10m", "--batch-enqueued-tokens", limit)),
    ]
    table = Table(
        title=f"{args.requests:,} requests, enqueued-token limit {args.limit:,} "
        f"(load {os.getloadavg()[0]:.1f})"
    )
    for col in (
        "mode", "wall s", "batches created", "refused", "batch lines", "failed lines",
        "most tokens live / limit",
    ):  # fmt: skip
        table.add_column(col, justify="right")
    with (
        tempfile.TemporaryDirectory() as tmp,
        simulator("--batch-seconds", "3", "--batch-enqueued-tokens", limit) as url,
    ):
        inp = Path(tmp) / "in.jsonl"
        write_input(inp, args.requests)
        for name, src, extra in modes:
            sim_reset(url)
            out = Path(tmp) / f"out-{name}.jsonl"
            wall = run_cli(inp, out, url, src, *extra)
            stats = sim_stats(url)
            batch, failed = lines(out)
            table.add_row(
                name,
                f"{wall:.1f}",
                str(stats["batches_created"]),
                str(stats["batches_token_limited"]),
                f"{batch:,}",
                f"{failed:,}",
                f"{stats['enqueued_tokens_max'] / args.limit:.2f}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
