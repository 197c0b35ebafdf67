"""Ray: throughput with 1, 2 and 4 workers, and one shared limit across 4 workers.

    python bench/ray_scale.py [--requests 4000] [--only throughput|shared] [--burn 2]

The simulator runs in its own process. Throughput: 200 ms latency, 128 requests in flight
per worker, no limit. Shared limit: 400 requests against a 1200 req/min server with
50 ms latency and 4 workers, once with the limit given and once adaptive (none given), on a
server that states its limits in headers and on one that answers a bare 429; `--burn N`
runs N CPU-burning processes beside it (refusals under load).
Makespan includes starting the Ray worker processes; "server span" is the simulator's
time from the first request received to the last answered, i.e. the pacing alone.
On this machine's 2 cores the simulator, the driver and the workers compete for CPU,
which caps the throughput column.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

import ray
from rich.console import Console
from rich.table import Table

from _sim import sim_reset, sim_stats, simulator
from llmbatch import BatchRequest, CompletionRequest
from llmbatch.ray import ClientSpec, ClusterLimiter, RayRunConfig, run_on_ray


def run(
    url: str, n: int, workers: int, concurrency: int, limiter: ClusterLimiter
) -> tuple[float, int]:
    lines: list[tuple[str, bytes, bool]] = []
    requests = (
        BatchRequest(f"r{i}", CompletionRequest(prompt=f"question {i}", max_tokens=8))
        for i in range(n)
    )
    start = time.perf_counter()
    asyncio.run(
        run_on_ray(
            requests,
            ClientSpec(base_url=url + "/v1", model="sim", max_connections=concurrency),
            limiter,
            RayRunConfig(workers=workers, concurrency=concurrency),
            lines.extend,
        )
    )
    elapsed = time.perf_counter() - start
    ok = len({cid for cid, _, good in lines if good})
    return elapsed, n - ok


def throughput(console: Console, n: int) -> None:
    table = Table(title=f"Throughput: {n} requests, 200 ms latency, 128 in flight per worker")
    for col in ("workers", "seconds", "req/s", "x 1 worker", "ideal req/s", "lost"):
        table.add_column(col, justify="right")
    with simulator("--latency-ms", "200") as url:
        run(url, 200, 1, 128, ClusterLimiter.create())  # warm-up: worker processes, imports
        base = None
        for workers in (1, 2, 4):
            elapsed, lost = run(url, n, workers, 128, ClusterLimiter.create())
            rps = n / elapsed
            base = base or rps
            table.add_row(
                str(workers),
                f"{elapsed:.1f}",
                f"{rps:,.0f}",
                f"{rps / base:.2f}x",
                f"{workers * 128 / 0.2:,.0f}",
                str(lost),
            )
    console.print(table)


def shared_limit(console: Console, burn: int) -> None:
    load = f", {burn} CPU burners beside" if burn else ""
    table = Table(
        title=f"Shared limit: 400 requests, server 1200 req/min, 50 ms latency, 4 workers{load}"
    )
    cols = ("server", "mode", "makespan s", "x ideal (20 s)", "server span s", "span x ideal")
    for col in (*cols, "refusals", "lost"):
        table.add_column(col, justify="right")
    for style in ("openai", "bare"):
        with simulator("--latency-ms", "50", "--rpm", "1200", "--limit-style", style) as url:
            for mode, limiter in (
                ("limit given (1200)", ClusterLimiter.create(requests_per_minute=1200)),
                ("adaptive (none given)", ClusterLimiter.create()),
            ):
                sim_reset(url)
                time.sleep(1.5)  # let the server's bucket refill
                elapsed, lost = run(url, 400, 4, 16, limiter)
                stats = sim_stats(url)
                refused = int(stats["over_limit"])  # type: ignore[call-overload]
                span = float(stats["last_answered"]) - float(stats["first_received"])  # type: ignore[arg-type]
                table.add_row(
                    "headers" if style == "openai" else "bare 429",
                    mode,
                    f"{elapsed:.2f}",
                    f"{elapsed / 20:.3f}",
                    f"{span:.2f}",
                    f"{span / 20:.3f}",
                    str(refused),
                    str(lost),
                )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument(
        "--burn", type=int, default=0, help="CPU burner processes beside the shared-limit runs"
    )
    parser.add_argument("--only", choices=("throughput", "shared"))
    args = parser.parse_args()
    # A cluster of its own: on a shared machine ray.init() would join one it finds running.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    console = Console(width=150)

    if args.only != "shared":
        throughput(console, args.requests)
    if args.only == "throughput":
        ray.shutdown()
        return

    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burn)
    ]
    try:
        shared_limit(console, args.burn)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    ray.shutdown()


if __name__ == "__main__":
    main()
