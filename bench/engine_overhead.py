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
import cProfile
import json
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

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


CONTENDERS: dict[str, Callable[[list[BatchRequest], int], object]] = {
    "bare gather+semaphore": bare,
    "llmbatch engine": engine,
}


def worker(name: str, n: int, conc: int, profile: bool) -> None:
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    requests = make_requests(n)  # built outside the timed part: both loops get the same list
    fn: Callable[..., object] = CONTENDERS[name]
    profiler = cProfile.Profile() if profile else None
    cpu0, t0 = time.process_time(), time.perf_counter()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        if profiler is not None:
            profiler.enable()
        ok = runner.run(fn(requests, conc))  # type: ignore[arg-type]
        if profiler is not None:
            profiler.disable()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if profiler is not None:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    print(json.dumps({"ok": ok, "elapsed": elapsed, "cpu": cpu}))


def measure(name: str, n: int, conc: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", name, str(n), str(conc)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


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
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
    for _ in range(args.repeat):  # interleaved: the machine is shared and noisy
        for name in CONTENDERS:
            runs[name].append(measure(name, n, conc))
    table = Table(title=f"Engine overhead: {n:,} zero-latency requests, concurrency {conc}")
    for col in ("contender", "ok", "req/s", "CPU us/req", "wall vs bare", "CPU vs bare"):
        table.add_column(col, justify="right")
    bare_runs = runs["bare gather+semaphore"]
    base = {k: statistics.median(r[k] for r in bare_runs) for k in ("elapsed", "cpu")}
    for name, rs in runs.items():
        elapsed = statistics.median(r["elapsed"] for r in rs)
        cpu = statistics.median(r["cpu"] for r in rs)
        ok = min(int(r["ok"]) for r in rs)
        table.add_row(
            name,
            f"{ok}/{n}",
            f"{n / elapsed:,.0f}",
            f"{cpu / n * 1e6:.1f}",
            f"{elapsed / base['elapsed']:.2f}x",
            f"{cpu / base['cpu']:.2f}x",
        )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
