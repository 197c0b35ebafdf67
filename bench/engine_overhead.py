"""Engine overhead: `BatchProcessor` (defaults) vs a bare `asyncio.gather` + semaphore loop.

    python bench/engine_overhead.py [--requests 50000] [--concurrency 64] [--repeat 5]
    python bench/engine_overhead.py --profile engine      # cProfile (CPU time) of one engine run
    python bench/engine_overhead.py --baseline DIR         # + the engine from DIR/src

Both contenders call the same zero-latency client, which answers at once with a prebuilt
reply (usage included), so what is measured is the per-request cost of everything around
the call: admission (breaker, adaptive limiter), timing, attempt logs, results. The engine
is built as a user builds it: `BatchProcessor(client, BatchProcessorConfig(max_concurrency=c))`
consumed as a stream. Each contender runs in a fresh process (same loop policy: uvloop when
installed), interleaved, median of `--repeat` runs; the table gives the ratio of the engine's
wall time to the bare loop's. Target (issue #28): <= 1.5x, stretch 1.3x.

A second bare contender, "bare worker loop": `concurrency` tasks pulling from one iterator,
no task per request. It is the cheapest loop one can write (a gather pays a task per
request), so "vs worker loop" is the figure a user who compares with that loop would see.
`--baseline DIR` adds "llmbatch engine (baseline)": the same contender importing llmbatch
from DIR/src (e.g. `git worktree add DIR main`), interleaved: before/after in one run.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

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


async def bare_workers(requests: list[BatchRequest], conc: int) -> int:
    client = InstantClient()
    todo = iter(requests)
    ok = 0

    async def worker() -> None:
        nonlocal ok
        for item in todo:
            response = await client.complete(item.request)
            ok += bool(response.content)

    await asyncio.gather(*(worker() for _ in range(conc)))
    return ok


async def engine(requests: list[BatchRequest], conc: int) -> int:
    processor = BatchProcessor(InstantClient(), BatchProcessorConfig(max_concurrency=conc))
    ok = 0
    async for result in processor.stream(requests):
        ok += result.ok
    return ok


CONTENDERS: dict[str, Callable[[list[BatchRequest], int], Awaitable[int]]] = {
    "bare gather+semaphore": bare,
    "bare worker loop": bare_workers,
    "llmbatch engine": engine,
}
BASELINE = "llmbatch engine (baseline)"


def worker(name: str, n: int, conc: int, profile: bool) -> None:
    requests = make_requests(n)  # built outside the timed part: both loops get the same list
    fn = CONTENDERS["llmbatch engine" if name == BASELINE else name]
    report(measure_here(lambda: fn(requests, conc), profile=profile))  # type: ignore[arg-type, return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs=3)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5, help="runs per contender (median)")
    parser.add_argument("--profile", choices=("engine", "bare"), help="cProfile one run")
    parser.add_argument("--baseline", help="a source tree: adds the engine from DIR/src")
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
    names, envs = list(CONTENDERS), {}
    if args.baseline:
        src = Path(args.baseline).resolve() / "src"
        if not (src / "llmbatch").is_dir():
            parser.error(f"--baseline: no llmbatch package under {src}")
        names.append(BASELINE)
        envs[BASELINE] = {"PYTHONPATH": str(src)}
    rows = interleaved(__file__, names, args.repeat, str(n), str(conc), envs=envs)
    table = Table(title=f"Engine overhead: {n:,} zero-latency requests, concurrency {conc}")
    columns = ("contender", "ok", "req/s", "CPU us/req", "wall vs bare", "CPU vs bare")
    for col in (*columns, "wall vs worker loop"):
        table.add_column(col, justify="right")
    base, loop = rows["bare gather+semaphore"], rows["bare worker loop"]
    for name, r in rows.items():
        table.add_row(
            name,
            f"{int(r['ok'])}/{n}",
            f"{n / r['elapsed']:,.0f}",
            f"{r['cpu'] / n * 1e6:.1f}",
            f"{r['elapsed'] / base['elapsed']:.2f}x",
            f"{r['cpu'] / base['cpu']:.2f}x",
            f"{r['elapsed'] / loop['elapsed']:.2f}x",
        )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
