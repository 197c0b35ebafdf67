"""HTTP throughput: llmbatch vs a bare aiohttp loop vs the official openai SDK, one run.

    python bench/http_throughput.py [--quick] [--repeat 5] [--only S1,S3] [--seconds 15]
    python bench/http_throughput.py --baseline /tmp/main-src   # + llmbatch from another tree

Each server runs in its own process, and so does each contender (a fresh process per run,
so CPU time and peak RSS are its alone). Runs are interleaved (bare, llmbatch, SDK, bare,
...) and every figure is the median of `--repeat` runs; a run is sized to last about
`--seconds` (at the ideal rate, concurrency / latency), because short runs are mostly ramp
and noise. The load average is printed for every scenario: the machine may be shared.

Scenarios (ideal rate = concurrency / latency):
  S0  our simulator, 0 ms latency, c=64, bare aiohttp only: the simulator's ceiling
  S1  our simulator, 50 ms, c=128
  S2  our simulator, 200 ms, c=512
  S3  a plain server written apart (`_plain_server.py`), 50 ms, c=128: answers gzip-encoded
      and chunked (no Content-Length), each connection closed after 100 answers
  S4  the same plain server, 200 ms, c=512

Target: llmbatch >= 1.0x bare aiohttp req/s. Every contender is built as its users would
build it: llmbatch with its defaults (only `max_concurrency` set); the bare loop as a careful
hand-written one (one session, a pool as wide as the concurrency, `concurrency` workers
pulling from one iterator, orjson both ways, the key in the session's headers); the SDK with
its defaults, on a quarter of the requests (it runs 3-4x slower, so its runs last as long).
`--breakdown` adds "llmbatch client, no engine": `OpenAIClient.complete` in the bare loop's
workers, so the table splits llmbatch's cost into the client's and the engine's.
`--baseline DIR` adds "llmbatch (baseline)": the same contender importing llmbatch from
DIR/src (e.g. `git worktree add DIR main`), interleaved with the others: before/after in one
run, on one machine state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

from _plain_server import plain_server
from _runs import in_process, interleaved, measure_here, report
from _sim import simulator

BODY = {"model": "sim-1", "max_tokens": 16}


async def bare_aiohttp(url: str, n: int, conc: int) -> int:
    import aiohttp
    import orjson

    ok = 0
    todo = iter(range(n))
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            nonlocal ok
            for i in todo:
                body = {**BODY, "messages": [{"role": "user", "content": f"question {i}"}]}
                data = orjson.dumps(body)
                async with session.post(url + "/v1/chat/completions", data=data) as resp:
                    reply = orjson.loads(await resp.read())
                    ok += resp.status == 200 and bool(reply["choices"][0]["message"]["content"])

        await asyncio.gather(*(worker() for _ in range(conc)))
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


async def llmbatch_client(url: str, n: int, conc: int) -> int:
    """`OpenAIClient.complete` in the bare loop's workers, no engine: the client path alone."""
    from llmbatch import CompletionRequest
    from llmbatch.clients import OpenAIClient

    ok = 0
    todo = iter(range(n))
    async with OpenAIClient(base_url=url + "/v1", api_key="sk-bench", model="sim-1") as client:

        async def worker() -> None:
            nonlocal ok
            for i in todo:
                reply = await client.complete(
                    CompletionRequest(prompt=f"question {i}", max_tokens=16)
                )
                ok += bool(reply.content)

        await asyncio.gather(*(worker() for _ in range(conc)))
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


BASELINE = "llmbatch (baseline)"
CLIENT = "llmbatch client, no engine"
CONTENDERS = {
    "bare aiohttp": bare_aiohttp,
    "llmbatch": llmbatch_run,
    BASELINE: llmbatch_run,
    CLIENT: llmbatch_client,
    "openai SDK": openai_sdk,
}
# The share of a scenario's requests each contender runs (the SDK is 3-4x slower).
SHARE = {"bare aiohttp": 1.0, "llmbatch": 1.0, BASELINE: 1.0, CLIENT: 1.0, "openai SDK": 0.25}
ALL = ["bare aiohttp", "llmbatch", "openai SDK"]

# label, server, latency ms, concurrency, contenders
SCENARIOS = [
    ("S0", "simulator", 0, 64, ["bare aiohttp"]),
    ("S1", "simulator", 50, 128, ALL),
    ("S2", "simulator", 200, 512, ALL),
    ("S3", "plain gzip+chunked, close/100", 50, 128, ALL),
    ("S4", "plain gzip+chunked, close/100", 200, 512, ALL),
]


@contextlib.contextmanager
def server(kind: str, latency: int) -> Iterator[str]:
    if kind == "simulator":
        with simulator("--latency-ms", str(latency)) as url:
            yield url
    else:
        with plain_server(latency_ms=latency, gzip=True, chunked=True, close_every=100) as url:
            yield url


def worker(name: str, url: str, n: int, conc: int, profile: bool = False) -> None:
    count = int(n * SHARE[name])
    report(measure_here(lambda: CONTENDERS[name](url, count, conc), profile=profile))


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=4)
    parser.add_argument("--profile", action="store_true", help="with --worker: cProfile (CPU)")
    parser.add_argument("--quick", action="store_true", help="runs of 3 s, 2 repeats")
    parser.add_argument("--repeat", type=int, default=5, help="runs per contender (median)")
    parser.add_argument("--seconds", type=float, default=15.0, help="a run's ideal length")
    parser.add_argument("--only", help="comma-separated scenario labels (S1,S3)")
    parser.add_argument("--baseline", help="a source tree: adds llmbatch from DIR/src")
    parser.add_argument("--no-sdk", action="store_true", help="leave the openai SDK out")
    parser.add_argument(
        "--breakdown", action="store_true", help=f"add {CLIENT!r}: the engine's share apart"
    )
    args = parser.parse_args()
    if args.worker:
        name, url, n, conc = args.worker
        worker(name, url, int(n), int(conc), args.profile)
        return
    seconds, repeat = (3.0, 2) if args.quick else (args.seconds, args.repeat)
    only = set(args.only.split(",")) if args.only else None
    table = Table(
        title=f"HTTP throughput (each server and contender in its own process; median of "
        f"{repeat} interleaved runs of ~{seconds:g} s; load average at start -> end)"
    )
    columns = ["scenario", "server", "load", "client", "ok", "req/s", "of ideal"]
    columns += ["CPU us/req", "peak RSS MB", "req/s vs bare", "CPU vs bare"]
    for col in columns:
        table.add_column(col, justify="right")
    envs = {}
    if args.baseline:
        src = Path(args.baseline).resolve() / "src"
        if not (src / "llmbatch").is_dir():
            parser.error(f"--baseline: no llmbatch package under {src}")
        envs[BASELINE] = {"PYTHONPATH": str(src)}
    for label, kind, latency, conc, names in SCENARIOS:
        if only is not None and label not in only:
            continue
        if args.baseline and "llmbatch" in names:
            names = [*names[:2], BASELINE, *names[2:]]
        if args.breakdown and "llmbatch" in names:
            names = [*names[:2], CLIENT, *names[2:]]
        if args.no_sdk:
            names = [name for name in names if name != "openai SDK"]
        ideal = conc / (latency / 1000) if latency else None
        n = int((ideal or 8000) * seconds)
        load = _load()
        with server(kind, latency) as url:
            in_process(__file__, "bare aiohttp", url, str(min(n, 1000)), str(conc))  # warm-up
            rows = interleaved(__file__, names, repeat, url, str(n), str(conc), envs=envs)
        load += f" -> {_load()}"
        bare = rows["bare aiohttp"]
        bare_rps, bare_cpu = n / bare["elapsed"], bare["cpu"] / n
        for name, r in rows.items():
            count = int(n * SHARE[name])
            rps, cpu = count / r["elapsed"], r["cpu"] / count
            table.add_row(
                f"{label} {latency}ms c={conc}",
                kind,
                load,
                name,
                f"{int(r['ok'])}/{count}",
                f"{rps:,.0f}",
                f"{rps / ideal:.2f}" if ideal else "-",
                f"{cpu * 1e6:.0f}",
                f"{r['rss_mb']:.0f}",
                f"{rps / bare_rps:.2f}x",
                f"{cpu / bare_cpu:.2f}x",
            )
        Console(width=200).print(table)  # after every scenario: a long run shows progress


if __name__ == "__main__":
    main()
