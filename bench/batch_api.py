"""The batch API at scale: 200,000 lines through the simulator's OpenAI Batch API.

    python bench/batch_api.py [--lines 200000] [--batch-seconds 2] [--provider openai]

Runs the library face the CLI uses (input read as the CLI reads it, `BatchAPIRunner`, the
one `ResultSink` over the output journal) in this process, timing its phases from the
runner's events: split + upload + create of every batch, the wait, and the merge of results
into the output (download, parse, write; summed over batches). Then the CLI reruns the same
output (all done: nothing is submitted) and `/stats` shows the batches created.

Cost at list prices for the tokens the simulator reported, from genai-prices' `calc_price`
(model stated below), realtime vs batch (both providers bill batches at 50%).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import orjson
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from rich.console import Console
from rich.table import Table

from _sim import sim_stats, simulator
from llmbatch.batch_api import (
    BatchAPIConfig,
    BatchAPIRunner,
    BatchEnded,
    BatchEvent,
    BatchPolled,
    BatchSubmitted,
)
from llmbatch.clients import AnthropicClient, OpenAIClient
from llmbatch.io.formats import InputItem, read_jsonl
from llmbatch.io.journal import Journal
from llmbatch.io.sink import ResultSink
from llmbatch.types import BatchRequest

MODELS = {"openai": ("gpt-4o-mini", "openai"), "anthropic": ("claude-3-5-haiku", "anthropic")}
BATCH_DISCOUNT = Decimal("0.5")


class Phases:
    """Wall times of the run's phases, from the runner's events."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.last_submitted = self.start
        self.ended_seen: dict[int, float] = {}
        self.merge = 0.0
        self.batches = 0

    def __call__(self, event: BatchEvent) -> None:
        now = time.perf_counter()
        if isinstance(event, BatchSubmitted):
            self.last_submitted, self.batches = now, self.batches + 1
        elif isinstance(event, BatchPolled) and event.status in ("completed", "ended"):
            self.ended_seen[event.n] = now
        elif isinstance(event, BatchEnded):
            self.merge += now - self.ended_seen.get(event.n, now)


async def run(
    provider: str, url: str, inp: Path, out: Path, phases: Phases
) -> tuple[int, int, int]:
    model = MODELS[provider][0]
    if provider == "openai":
        client: OpenAIClient | AnthropicClient = OpenAIClient(
            base_url=url + "/v1", api_key="sk", model=model
        )
    else:
        client = AnthropicClient(base_url=url, api_key="sk", model=model)
    journal = Journal(out)
    journal.open()
    sink = ResultSink(journal, expected=0)
    requests = (
        BatchRequest(item.id, item.request)
        for item in read_jsonl(inp)
        if isinstance(item, InputItem)
    )
    runner = BatchAPIRunner(
        client, BatchAPIConfig(out, poll_interval=0.25, max_poll_interval=1.0, listeners=[phases])
    )
    prompt = completion = 0
    try:
        async for result in runner.stream(requests, flush=sink.flush):
            sink.write(result)
            if result.response is not None:
                prompt += result.response.usage.prompt_tokens
                completion += result.response.usage.completion_tokens
        sink.close()
    finally:
        sink.abandon()
        await client.aclose()
    return sink.written, prompt, completion


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--batch-seconds", default="2")
    parser.add_argument("--provider", choices=sorted(MODELS), default="openai")
    args = parser.parse_args()
    n = args.lines
    model, price_provider = MODELS[args.provider]
    with (
        tempfile.TemporaryDirectory() as tmp,
        simulator("--batch-seconds", args.batch_seconds, "--latency-ms", "0") as url,
    ):
        inp, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        with open(inp, "wb") as f:
            for i in range(n):
                line = {"id": f"req-{i}", "prompt": f"Summarize item {i}.", "max_tokens": 64}
                f.write(orjson.dumps(line) + b"\n")
        phases = Phases()
        written, prompt, completion = asyncio.run(run(args.provider, url, inp, out, phases))
        total = time.perf_counter() - phases.start
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        created = int(sim_stats(url)["batches_created"])  # type: ignore[call-overload]
        # The CLI on the finished output: resumes, submits nothing.
        base = url + "/v1" if args.provider == "openai" else url
        t0 = time.perf_counter()
        rerun = subprocess.run(
            [
                sys.executable,
                "-m",
                "llmbatch",
                "run",
                str(inp),
                "-o",
                str(out),
                "--batch-api",
                "--provider",
                args.provider,
                "--base-url",
                base,
                "--model",
                model,
                "--no-progress",
            ],
            capture_output=True,
            env={
                "OPENAI_API_KEY": "sk",
                "ANTHROPIC_API_KEY": "sk",
                "PATH": "/usr/bin:/bin",
                **{k: v for k, v in __import__("os").environ.items() if k == "PYTHONPATH"},
            },
        )
        rerun_s = time.perf_counter() - t0
        created_after = int(sim_stats(url)["batches_created"])  # type: ignore[call-overload]
        with open(out, "rb") as f:
            out_lines = sum(1 for _ in f)
    usage = PriceUsage(input_tokens=prompt, output_tokens=completion)
    realtime = calc_price(usage, model, provider_id=price_provider).total_price
    batch = realtime * BATCH_DISCOUNT

    table = Table(
        title=f"--batch-api, {n:,} lines, {args.provider} simulator (batch {args.batch_seconds}s)"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("batches created", f"{phases.batches} (simulator: {created})")
    table.add_row(
        "split + upload + create, all batches", f"{phases.last_submitted - phases.start:.1f} s"
    )
    table.add_row("merge results into the output (summed)", f"{phases.merge:.1f} s")
    table.add_row("whole run (incl. waiting on batches)", f"{total:.1f} s")
    table.add_row("peak RSS of the process", f"{peak_mb:.0f} MB")
    table.add_row("lines written / in output", f"{written:,} / {out_lines:,}")
    table.add_row(
        "CLI rerun, all done",
        f"{rerun_s:.1f} s, exit {rerun.returncode}, batches created {created_after - created}",
    )
    table.add_row("tokens in / out", f"{prompt:,} / {completion:,}")
    table.add_row(f"cost realtime ({model}, list price)", f"${realtime:.4f}")
    table.add_row("cost batch API (50%)", f"${batch:.4f}")
    table.add_row("saved", f"${realtime - batch:.4f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
