"""Gemini realtime throughput: llmbatch's GeminiClient vs its OpenAIClient vs the google-genai
SDK, against the same simulator, in one run.

    python bench/gemini_throughput.py [--quick]

The simulator (`llmbatch simulate`, 50 ms latency) answers both routes with the same logic,
so the two llmbatch clients differ only in their wire format; the SDK (`client.aio`, its own
transport) is what a Gemini user would otherwise write, with a semaphore for concurrency.
Each contender runs in a fresh process of its own so CPU time and peak RSS are its alone;
each figure is the median of `--repeat` interleaved runs (the machine is shared and noisy).
Target: GeminiClient within 1.2x of OpenAIClient's CPU per request, so choosing Gemini costs
llmbatch's users no client-side throughput.
"""

from __future__ import annotations

import argparse
import asyncio

from rich.console import Console
from rich.table import Table

from _runs import in_process, interleaved, measure_here, report
from _sim import simulator

MODEL = "gemini-2.5-flash"


async def _through(client: object, n: int, conc: int) -> int:
    from llmbatch import BatchProcessor, BatchProcessorConfig, BatchRequest, CompletionRequest

    processor = BatchProcessor(client, BatchProcessorConfig(max_concurrency=conc))  # type: ignore[arg-type]
    requests = (
        BatchRequest(str(i), CompletionRequest(prompt=f"question {i}", max_tokens=16))
        for i in range(n)
    )
    ok = 0
    async for result in processor.stream(requests):
        ok += result.ok
    return ok


async def llmbatch_gemini(url: str, n: int, conc: int) -> int:
    from llmbatch.clients import GeminiClient

    async with GeminiClient(base_url=url, api_key="gm-bench", model=MODEL) as client:
        return await _through(client, n, conc)


async def llmbatch_openai(url: str, n: int, conc: int) -> int:
    from llmbatch.clients import OpenAIClient

    async with OpenAIClient(base_url=url + "/v1", api_key="sk-bench", model=MODEL) as client:
        return await _through(client, n, conc)


async def genai_sdk(url: str, n: int, conc: int) -> int:
    from google import genai
    from google.genai import types

    options = types.HttpOptions(base_url=url, api_version="v1beta")
    client = genai.Client(api_key="gm-bench", http_options=options)
    config = types.GenerateContentConfig(max_output_tokens=16)
    sem = asyncio.Semaphore(conc)
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        async with sem:
            reply = await client.aio.models.generate_content(
                model=MODEL, contents=f"question {i}", config=config
            )
            ok += bool(reply.text)

    await asyncio.gather(*(one(i) for i in range(n)))
    await client.aio.aclose()
    return ok


CONTENDERS = {
    "llmbatch OpenAIClient": llmbatch_openai,
    "llmbatch GeminiClient": llmbatch_gemini,
    "google-genai SDK": genai_sdk,
}


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
    n, conc = (1000 if args.quick else 4000), 128
    table = Table(title=f"Gemini realtime, {n:,} requests, 50 ms latency, concurrency {conc}")
    for col in ("client", "ok", "req/s", "CPU ms/req", "peak RSS MB", "CPU vs OpenAIClient"):
        table.add_column(col, justify="right")
    with simulator("--latency-ms", "50") as url:
        in_process(__file__, "llmbatch OpenAIClient", url, "200", str(conc))  # warm-up
        rows = interleaved(__file__, list(CONTENDERS), args.repeat, url, str(n), str(conc))
    base_cpu = rows["llmbatch OpenAIClient"]["cpu"] / n
    for name, r in rows.items():
        cpu = r["cpu"] / n
        table.add_row(
            name,
            f"{int(r['ok'])}/{n}",
            f"{n / r['elapsed']:,.0f}",
            f"{cpu * 1000:.3f}",
            f"{r['rss_mb']:.0f}",
            f"{cpu / base_cpu:.2f}x",
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
