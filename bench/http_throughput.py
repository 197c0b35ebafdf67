"""HTTP throughput: llmbatch vs a bare aiohttp loop vs the official openai SDK, one run.

    python bench/http_throughput.py [--quick]

The simulator runs in its own process (`llmbatch simulate`); each contender runs in a fresh
process of its own so CPU time and peak RSS are its alone. Scenarios:
  S0  0 ms latency, 4,000 requests, concurrency 64 (bare aiohttp): the simulator's ceiling
  S1  50 ms latency, 4,000 requests, concurrency 128
  S2  200 ms latency, 6,000 requests, concurrency 512
Targets: llmbatch >= 0.9x bare aiohttp req/s, CPU per request <= 1.2x bare. Each figure is
the median of `--repeat` interleaved runs. Every contender is built as its users would
build it: llmbatch with its default connection pool (only `max_concurrency` is set), so a
pool smaller than the concurrency shows here.
"""

from __future__ import annotations

import argparse
import asyncio

from rich.console import Console
from rich.table import Table

from _runs import in_process, interleaved, measure_here, report
from _sim import simulator

BODY = {"model": "sim-1", "max_tokens": 16}


async def bare_aiohttp(url: str, n: int, conc: int) -> int:
    import aiohttp

    sem = asyncio.Semaphore(conc)
    ok = 0
    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            nonlocal ok
            body = {**BODY, "messages": [{"role": "user", "content": f"question {i}"}]}
            async with (
                sem,
                session.post(
                    url + "/v1/chat/completions",
                    json=body,
                    headers={"Authorization": "Bearer sk-bench"},
                ) as resp,
            ):
                data = await resp.json()
                ok += resp.status == 200 and bool(data["choices"][0]["message"]["content"])

        await asyncio.gather(*(one(i) for i in range(n)))
    return ok


async def llmbatch_run(url: str, n: int, conc: int) -> int:
    from llmbatch import BatchProcessor, BatchProcessorConfig, BatchRequest, CompletionRequest
    from llmbatch.clients import OpenAIClient

    # As a user would write it: no pool size, only the concurrency asked of the processor.
    async with OpenAIClient(base_url=url + "/v1", api_key="sk-bench", model="sim-1") as client:
        processor = BatchProcessor(client, BatchProcessorConfig(max_concurrency=conc))
        requests = (
            BatchRequest(str(i), CompletionRequest(prompt=f"question {i}", max_tokens=16))
            for i in range(n)
        )
        ok = 0
        async for result in processor.stream(requests):
            ok += result.ok
    return ok


async def openai_sdk(url: str, n: int, conc: int) -> int:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-bench", max_retries=2)
    sem = asyncio.Semaphore(conc)
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        async with sem:
            resp = await client.chat.completions.create(
                model="sim-1",
                max_tokens=16,
                messages=[{"role": "user", "content": f"question {i}"}],
            )
            ok += bool(resp.choices[0].message.content)

    await asyncio.gather(*(one(i) for i in range(n)))
    await client.close()
    return ok


CONTENDERS = {"bare aiohttp": bare_aiohttp, "llmbatch": llmbatch_run, "openai SDK": openai_sdk}


def worker(name: str, url: str, n: int, conc: int) -> None:
    report(measure_here(lambda: CONTENDERS[name](url, n, conc)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=4)
    parser.add_argument("--quick", action="store_true", help="a quarter of the requests")
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender (median)")
    args = parser.parse_args()
    if args.worker:
        name, url, n, conc = args.worker
        worker(name, url, int(n), int(conc))
        return
    scale = 4 if args.quick else 1
    scenarios = [
        ("S0", 0, 4000 // scale, 64, ["bare aiohttp"]),
        ("S1", 50, 4000 // scale, 128, list(CONTENDERS)),
        ("S2", 200, 6000 // scale, 512, list(CONTENDERS)),
    ]
    table = Table(title="HTTP throughput against the simulator (separate processes)")
    for col in (
        "scenario",
        "client",
        "ok",
        "req/s",
        "CPU ms/req",
        "peak RSS MB",
        "req/s vs bare",
        "CPU vs bare",
    ):
        table.add_column(col, justify="right")
    for label, latency, n, conc, names in scenarios:
        with simulator("--latency-ms", str(latency)) as url:
            in_process(__file__, "bare aiohttp", url, str(min(n, 500)), str(conc))  # warm-up
            rows = interleaved(__file__, names, args.repeat, url, str(n), str(conc))
        bare = rows["bare aiohttp"]
        bare_rps, bare_cpu = n / bare["elapsed"], bare["cpu"] / n
        for name, r in rows.items():
            rps, cpu = n / r["elapsed"], r["cpu"] / n
            table.add_row(
                f"{label} {latency}ms c={conc}",
                name,
                f"{int(r['ok'])}/{n}",
                f"{rps:,.0f}",
                f"{cpu * 1000:.3f}",
                f"{r['rss_mb']:.0f}",
                f"{rps / bare_rps:.2f}x",
                f"{cpu / bare_cpu:.2f}x",
            )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
