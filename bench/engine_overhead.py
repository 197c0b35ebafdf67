"""Engine overhead: `BatchProcessor` (defaults) vs a bare `asyncio.gather` + semaphore loop.

    python bench/engine_overhead.py [--requests 50000] [--concurrency 64] [--repeat 5]
    python bench/engine_overhead.py --profile engine      # cProfile of one engine run

Both contenders call the same zero-latency client, which answers at once with a prebuilt
reply (usage included), so what is measured is the per-request cost of everything around
the call: admission (breaker, adaptive limiter), timing, attempt logs, results. The engine
is built as a user builds it: `BatchProcessor(client, BatchProcessorConfig(max_concurrency=c))`
consumed as a stream. Each contender runs in a fresh process (same loop policy: uvloop when
installed), interleaved, median of `--repeat` runs; the table gives the ratio of the engine's
wall time to the bare loop's. Target (issue #28): <= 1.5x, stretch 1.3x.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

from rich.console import Console
from rich.table import Table

from _runs import interleaved, measure_here, report
from llmbatch import BatchProcessor, BatchProcessorConfig, BatchRequest, CompletionRequest
from llmbatch.types import CompletionResponse, Usage


class InstantClient:
    """Answers every request at once, as a provider with no latency would."""

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        self.calls += 1
        return CompletionResponse(
            content="ok", model="instant", usage=Usage(3, 1), finish_reason="stop"
        )


def make_requests(n: int) -> list[BatchRequest]:
    return [
        BatchRequest(str(i), CompletionRequest(prompt=f"q {i}", max_tokens=16)) for i in range(n)
    ]


async def bare(requests: list[BatchRequest], conc: int) -> int:
    client = InstantClient()
    sem = asyncio.Semaphore(conc)

    async def one(item: BatchRequest) -> bool:
        async with sem:
            response = await client.complete(item.request)
            return bool(response.content)

    results = await asyncio.gather(*(one(r) for r in requests))
    return sum(results)


async def engine(requests: list[BatchRequest], conc: int) -> int:
    processor = BatchProcessor(InstantClient(), BatchProcessorConfig(max_concurrency=conc))
    ok = 0
    async for result in processor.stream(requests):
        ok += result.ok
    return ok


CONTENDERS: dict[str, Callable[[list[BatchRequest], int], Awaitable[int]]] = {
    "bare gather+semaphore": bare,
    "llmbatch engine": engine,
}


def worker(name: str, n: int, conc: int, profile: bool) -> None:
    requests = make_requests(n)  # built outside the timed part: both loops get the same list
    fn = CONTENDERS[name]
    report(measure_here(lambda: fn(requests, conc), profile=profile))  # type: ignore[arg-type, return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs=3)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5, help="runs per contender (median)")
    parser.add_argument("--profile", choices=("engine", "bare"), help="cProfile one run")
    args = parser.parse_args()
    if args.worker:
        name, n, conc = args.worker
        worker(name, int(n), int(conc), profile=False)
        return
    if args.profile:
        name = "llmbatch engine" if args.profile == "engine" else "bare gather+semaphore"
        worker(name, args.requests, args.concurrency, profile=True)
        return
    n, conc = args.requests, args.concurrency
    rows = interleaved(__file__, list(CONTENDERS), args.repeat, str(n), str(conc))
    table = Table(title=f"Engine overhead: {n:,} zero-latency requests, concurrency {conc}")
    for col in ("contender", "ok", "req/s", "CPU us/req", "wall vs bare", "CPU vs bare"):
        table.add_column(col, justify="right")
    base = rows["bare gather+semaphore"]
    for name, r in rows.items():
        table.add_row(
            name,
            f"{int(r['ok'])}/{n}",
            f"{n / r['elapsed']:,.0f}",
            f"{r['cpu'] / n * 1e6:.1f}",
            f"{r['elapsed'] / base['elapsed']:.2f}x",
            f"{r['cpu'] / base['cpu']:.2f}x",
        )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
