"""Prompt-cache-aware runs against the simulator's caches: `prompt_cache="auto"` vs `"off"`.

    python bench/prompt_cache.py [--requests 2000] [--prefixes 20] [--concurrency 64]

2,000 requests over 20 long system prompts (about 1,500 tokens each) in shuffled order, each
with a short unique question, run with `llmbatch.run` as a user would (defaults, concurrency
64), realtime and through the batch API, Anthropic-style and OpenAI-style; one fresh
simulator per run (latency 200 +- 100 ms), so every run starts with cold caches. A last
scenario is where OpenAI's routing decides: 200 prompts alike in their first 256 tokens
(one shared preamble, then a task of their own), 10 requests each, interleaved.

Reported per run, from the output lines' usage: the share of the shared prefix tokens read
from the cache, the requests that wrote a cache entry (Anthropic: `cache_creation_input_
tokens`; OpenAI: the simulator's count, OpenAI does not report writes), the input cost at
list prices (`llmbatch.pricing`, genai-prices: Claude Sonnet 4.5 reads at 0.1x and writes at
1.25x (1 hour: 2x) the input price; GPT-4.1 mini reads at 0.25x), its ratio to `off`, and
the wall time.

`--census N` instead measures the precheck's prefix census over N generated requests (half
of them sharing 20 system prompts of ~1,500 tokens, half with a prompt of their own): lines
per second and peak memory (tracemalloc), against exact counting in a dict.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from _sim import sim_stats, simulator
from llmbatch import RunConfig, run
from llmbatch.pricing import Pricer
from llmbatch.prompt_cache.census import PrefixCensus
from llmbatch.prompt_cache.prefix import prefix_of
from llmbatch.types import CompletionRequest, Usage

MODELS = {"anthropic": "claude-sonnet-4-5", "openai": "gpt-4.1-mini"}
WORDS = "rules examples format tone schema label edge case policy review note".split()


@dataclass
class Outcome:
    scenario: str
    mode: str
    requests: int
    prefix_tokens: int
    cached: int
    writers: int
    input_cost: float
    seconds: float


def system_prompts(n: int, tokens: int, seed: int, shared_start: bool = False) -> list[str]:
    rng = random.Random(seed)
    preamble = " ".join(rng.choice(WORDS) for _ in range(300)) if shared_start else ""
    prompts = []
    for p in range(n):
        body = " ".join(rng.choice(WORDS) for _ in range(tokens * 4 // 7))
        text = f"{preamble} Task {p}: {body}" if shared_start else f"Prompt {p}: {body}"
        prompts.append(text[: tokens * 4])
    return prompts


def write_input(path: Path, prompts: list[str], each: int, seed: int) -> int:
    lines = [
        {"id": f"p{p}-{i}", "system": system, "prompt": f"Question {i} about item {p}?"}
        for p, system in enumerate(prompts)
        for i in range(each)
    ]
    random.Random(seed).shuffle(lines)
    path.write_bytes(b"".join(orjson.dumps(line | {"max_tokens": 16}) + b"\n" for line in lines))
    return sum(len(s) // 4 for s in prompts) * each


def one_run(
    provider: str, mode: str, batch: bool, inp: Path, out: Path, concurrency: int
) -> tuple[float, dict[str, int]]:
    args = (
        "--latency-ms",
        "200",
        "--latency-jitter-ms",
        "100",
        "--batch-seconds",
        "1",
        "--seed",
        "1",
    )
    with simulator(*args) as url:
        config = RunConfig(
            input=str(inp),
            output=str(out),
            provider=provider,
            base_url=url if provider == "anthropic" else url + "/v1",
            model=MODELS[provider],
            concurrency=concurrency,
            prompt_cache=mode,  # type: ignore[arg-type]
            batch_api=batch,
            poll_interval=0.2,
        )
        started = time.perf_counter()
        summary = run(config)
        seconds = time.perf_counter() - started
        assert summary.exit_code == 0, summary
        return seconds, sim_stats(url)


def measure(
    scenario: str,
    provider: str,
    mode: str,
    batch: bool,
    inp: Path,
    prefix_tokens: int,
    args: argparse.Namespace,
) -> Outcome:
    out = inp.with_name(f"{scenario}-{mode}.jsonl".replace(" ", "_"))
    seconds, stats = one_run(provider, mode, batch, inp, out, args.concurrency)
    pricer = Pricer(provider=provider, model=MODELS[provider])
    cached = writers = requests = 0
    cost = 0.0
    for raw in out.read_bytes().splitlines():
        line = orjson.loads(raw)
        usage = line["response"]["body"]["usage"]
        requests += 1
        if provider == "anthropic":
            read = usage.get("cache_read_input_tokens") or 0
            written = usage.get("cache_creation_input_tokens") or 0
            hour = (usage.get("cache_creation") or {}).get("ephemeral_1h_input_tokens") or 0
            prompt = usage["input_tokens"] + read + written
            writers += written > 0
        else:
            read = usage["prompt_tokens_details"]["cached_tokens"]
            written, hour, prompt = 0, 0, usage["prompt_tokens"]
        cached += read
        usd = pricer.usage_cost(
            None,
            Usage(
                prompt,
                0,
                cached_tokens=read,
                cache_write_tokens=written,
                cache_write_1h_tokens=hour,
            ),
            batch=batch,
        )
        cost += usd or 0.0
    if provider == "openai":
        writers = stats["cache_writes"]
    return Outcome(scenario, mode, requests, prefix_tokens, cached, writers, cost, seconds)


def census_requests(n: int) -> Iterator[CompletionRequest]:
    shared = system_prompts(20, 1500, seed=11)
    for i in range(n):
        system = shared[(i // 2) % 20] if i % 2 else f"A prompt of its own, number {i}."
        yield CompletionRequest(system=system, prompt=f"q{i}")


class ExactCount:
    """Every prefix counted exactly, in a dict: what the census bounds."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def add(self, request: CompletionRequest) -> None:
        prefix = prefix_of(request, "m")
        if prefix is not None:
            self.counts[prefix.key] = self.counts.get(prefix.key, 0) + 1

    def shared(self) -> int:
        return sum(1 for c in self.counts.values() if c >= 2)


def census_table(n: int) -> Table:
    """The census against exact counting: lines/s and peak memory of each (timed without
    tracemalloc, measured with it in a second pass)."""
    rows = []
    for name in ("census (Misra-Gries)", "exact dict"):
        found = 0
        seconds = peak = 0.0
        for traced in (False, True):
            counter = PrefixCensus(model="m") if name.startswith("census") else ExactCount()
            if traced:
                tracemalloc.start()
            started = time.perf_counter()
            for request in census_requests(n):
                counter.add(request)
            if traced:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            else:
                seconds = time.perf_counter() - started
            found = len(counter.groups()) if isinstance(counter, PrefixCensus) else counter.shared()
        rows.append((name, n / seconds, peak, found))
    table = Table(title=f"prefix census over {n:,} requests (half of them in 20 shared prefixes)")
    for column in ("counting", "lines/s", "peak MB", "shared prefixes found", "memory vs exact"):
        table.add_column(column, justify="left" if column == "counting" else "right")
    for name, rate, peak, found in rows:
        ratio = peak / rows[1][2]
        table.add_row(name, f"{rate:,.0f}", f"{peak / 1e6:,.1f}", str(found), f"{ratio:.3f}x")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--prefixes", type=int, default=20)
    parser.add_argument("--prefix-tokens", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--only", help="run only scenarios whose name contains this")
    parser.add_argument("--census", type=int, metavar="N", help="measure the census instead")
    args = parser.parse_args()
    if args.census:
        Console(width=150).print(census_table(args.census))
        return
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    os.environ.setdefault("ANTHROPIC_API_KEY", "sk-ant-bench")
    each = args.requests // args.prefixes
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        plain = system_prompts(args.prefixes, args.prefix_tokens, seed=7)
        plain_input = base / "plain.jsonl"
        plain_tokens = write_input(plain_input, plain, each, seed=8)
        many = system_prompts(200, args.prefix_tokens, seed=9, shared_start=True)
        many_input = base / "many.jsonl"
        many_tokens = write_input(many_input, many, 10, seed=10)
        scenarios = [
            ("anthropic realtime", "anthropic", False, plain_input, plain_tokens),
            ("anthropic batch", "anthropic", True, plain_input, plain_tokens),
            ("openai realtime", "openai", False, plain_input, plain_tokens),
            ("openai batch", "openai", True, plain_input, plain_tokens),
            ("openai 200 alike", "openai", False, many_input, many_tokens),
        ]
        for name, provider, batch, inp, tokens in scenarios:
            if args.only and args.only not in name:
                continue
            for mode in ("off", "auto"):
                outcomes.append(measure(name, provider, mode, batch, inp, tokens, args))
    table = Table(title=f"prompt_cache auto vs off, concurrency {args.concurrency}")
    for column in ("scenario", "mode", "requests", "prefix tokens cached", "cache writers",
                   "input cost USD", "cost vs off", "wall s"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("scenario", "mode") else "right")
    off_cost: dict[str, float] = {}
    for o in outcomes:
        if o.mode == "off":
            off_cost[o.scenario] = o.input_cost
        ratio = o.input_cost / off_cost[o.scenario] if off_cost.get(o.scenario) else float("nan")
        table.add_row(
            o.scenario,
            o.mode,
            str(o.requests),
            f"{o.cached / o.prefix_tokens:.1%}",
            str(o.writers),
            f"{o.input_cost:.4f}",
            f"{ratio:.2f}x",
            f"{o.seconds:.1f}",
        )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
