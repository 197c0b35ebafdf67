"""Pacing against a 1200 req/min server: configured limit vs. adaptive (no limit given).

    python bench/pacing.py [--requests 400] [--rpm 1200]

The simulator runs in its own process with 50 ms latency; llmbatch sends 400 requests at
concurrency 32. Ideal makespan: requests / (rpm/60) seconds (20 s for 400 at 1200/min);
the server's bucket starts full (one second's worth), so a perfect pacer can finish one
second earlier ("full-bucket ideal"). Targets: configured <= 1.02x ideal,
0 429s; adaptive <= 1.25x ideal, 429s <= 10% of requests; 0 lost in both.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from rich.console import Console
from rich.table import Table

from _sim import sim_reset, sim_stats, simulator
from llmbatch import BatchProcessor, BatchProcessorConfig, BatchRequest, CompletionRequest
from llmbatch.clients import OpenAIClient
from llmbatch.limiter import RateLimiter


async def run(url: str, n: int, limiter: RateLimiter | None) -> tuple[float, int]:
    async with OpenAIClient(base_url=url + "/v1", api_key="sk-bench", model="sim") as client:
        processor = BatchProcessor(
            client, BatchProcessorConfig(max_concurrency=32, rate_limiter=limiter)
        )
        requests = [
            BatchRequest(str(i), CompletionRequest(prompt=f"question {i}", max_tokens=16))
            for i in range(n)
        ]
        start = time.perf_counter()
        results = await processor.aprocess_batch(requests)
        elapsed = time.perf_counter() - start
    return elapsed, sum(r.error is not None for r in results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rpm", type=int, default=1200)
    args = parser.parse_args()
    n, rpm = args.requests, args.rpm
    ideal = n / (rpm / 60)
    full_bucket = max(0.0, (n - rpm / 60) / (rpm / 60))
    table = Table(title=f"Pacing: {n} requests, server limit {rpm} req/min, 50 ms latency")
    cols = ("mode", "makespan s", "ideal s", "x ideal", "full-bucket ideal s", "429s", "429 %")
    for col in (*cols, "lost"):
        table.add_column(col, justify="right")
    with simulator("--latency-ms", "50", "--rpm", str(rpm), "--seed", "1") as url:
        for mode, limiter in (
            ("configured rpm", RateLimiter(requests_per_minute=rpm)),
            ("adaptive (none given)", None),
        ):
            sim_reset(url)
            time.sleep(1.5)  # let the server's bucket refill between runs
            elapsed, lost = asyncio.run(run(url, n, limiter))
            stats = sim_stats(url)
            n429 = int(stats.get("rate_limited", 0))  # type: ignore[call-overload]
            table.add_row(
                mode,
                f"{elapsed:.2f}",
                f"{ideal:.2f}",
                f"{elapsed / ideal:.3f}",
                f"{full_bucket:.2f}",
                str(n429),
                f"{100 * n429 / n:.1f}",
                str(lost),
            )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
