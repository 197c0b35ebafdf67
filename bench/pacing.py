"""Pacing on every kind of server: limit given vs adaptive, and fixed vs `auto` concurrency.

    python bench/pacing.py [--quick] [--requests 400] [--rpm 1200] [--only limits|queue]

Everything is built as a user would build it: library defaults, no hand-set pool sizes.
Each run gets a fresh `llmbatch simulate` process (its bucket starts full).

Matrix 1, server styles at `--rpm` (1200/min) with 50 ms latency, 400 requests, concurrency
32: openai (x-ratelimit-* headers), anthropic (anthropic-ratelimit-*, AnthropicClient on
/v1/messages), retry-after (only that header), bare (429 with nothing), and a server that
answers 503 "overloaded" with no header over its limit. Modes: "limit given"
(`limiter=RateLimiter(requests_per_minute=rpm)`) and "adaptive" (nothing given).
Ideal makespan: requests / (rpm/60). Targets: adaptive <= 1.15x ideal, refusals <= 5% of
requests, 0 lost; limit given <= 1.05x ideal, 0 refusals, 0 lost. A run is cut at 5x ideal
(what is unfinished then counts as lost).

Matrix 2, the `queue` style (2 model slots, 200 ms a request, no refusals: latency grows
with the queue), 200 requests at fixed concurrency 1, 4, 16, 64 and `auto`: throughput,
p50/p95 latency (`BatchResult.duration`). Targets: auto >= 0.9x the best fixed throughput,
auto p95 <= 2x the best fixed one's (best: the highest throughput, ties within 2% going to
the lower p95). If the installed engine does not take `max_concurrency="auto"` yet, its row
says so instead of failing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from llmbatch import BatchProcessor, BatchProcessorConfig, BatchRequest, CompletionRequest
from llmbatch.clients import AnthropicClient, OpenAIClient
from llmbatch.limiter import RateLimiter
from llmbatch.simulate import SimulatorProcess

LATENCY_MS = 50
CONCURRENCY = 32
# style label, simulator flags, client ("openai" or "anthropic")
STYLES = (
    ("openai", ("--limit-style", "openai"), "openai"),
    ("anthropic", ("--limit-style", "anthropic"), "anthropic"),
    ("retry-after", ("--limit-style", "retry-after"), "openai"),
    ("bare", ("--limit-style", "bare"), "openai"),
    ("503 over limit", ("--limit-style", "bare", "--over-limit-status", "503"), "openai"),
)
QUEUE_FLAGS = ("--limit-style", "queue", "--slots", "2", "--latency-ms", "200")
# Token-limited servers: the token budget binds long before the request count. Prompts vary
# in length (10 to 100 tokens, seeded) so a request rate is no stable stand-in for tokens.
TPM = 120_000
TOKEN_MAX_TOKENS = 64
# style label, simulator flags, client, the limits a user would give (RateLimiter kwargs)
TOKEN_STYLES: tuple[tuple[str, tuple[str, ...], str, dict[str, int]], ...] = (
    (
        "tokens, bare 429",
        ("--tpm", str(TPM), "--limit-style", "bare"),
        "openai",
        {"tokens_per_minute": TPM},
    ),
    (
        "tokens, retry-after",
        ("--tpm", str(TPM), "--limit-style", "retry-after"),
        "openai",
        {"tokens_per_minute": TPM},
    ),
    (
        "tokens, 503",
        ("--tpm", str(TPM), "--limit-style", "bare", "--over-limit-status", "503"),
        "openai",
        {"tokens_per_minute": TPM},
    ),
    (
        "in/out tokens, bare",
        ("--itpm", str(TPM // 2), "--otpm", str(TPM // 2), "--limit-style", "bare"),
        "anthropic",
        {"input_tokens_per_minute": TPM // 2, "output_tokens_per_minute": TPM // 2},
    ),
    (
        "tokens, openai headers",
        ("--tpm", str(TPM), "--limit-style", "openai"),
        "openai",
        {"tokens_per_minute": TPM},
    ),
)
QUEUE_CONCURRENCIES: tuple[int | str, ...] = (1, 4, 16, 64, "auto")


@dataclass
class Run:
    makespan: float
    lost: int
    durations: list[float]
    stats: dict[str, Any]


def make_client(kind: str, url: str) -> OpenAIClient | AnthropicClient:
    if kind == "anthropic":
        return AnthropicClient(base_url=url, api_key="sk-bench", model="sim")
    return OpenAIClient(base_url=url + "/v1", api_key="sk-bench", model="sim")


def token_requests(n: int) -> list[BatchRequest]:
    """Prompts of 10 to 100 tokens (40 to 400 characters), the same for every run."""
    rng = random.Random(7)
    return [
        BatchRequest(
            str(i),
            CompletionRequest(
                prompt=f"question {i} " + "x" * rng.randint(30, 390), max_tokens=TOKEN_MAX_TOKENS
            ),
        )
        for i in range(n)
    ]


def plain_requests(n: int) -> list[BatchRequest]:
    return [
        BatchRequest(str(i), CompletionRequest(prompt=f"question {i}", max_tokens=16))
        for i in range(n)
    ]


async def run_batch(
    kind: str,
    url: str,
    n: int,
    config: BatchProcessorConfig,
    cut: float,
    requests: list[BatchRequest] | None = None,
) -> Run:
    requests = requests if requests is not None else plain_requests(n)
    async with make_client(kind, url) as client:
        processor = BatchProcessor(client, config)
        start = time.perf_counter()
        results = await processor.aprocess_batch(requests, timeout=cut)
        makespan = time.perf_counter() - start
    return Run(
        makespan,
        sum(r.error is not None for r in results),
        [r.duration for r in results if r.ok],
        {},
    )


def measure(
    flags: tuple[str, ...],
    kind: str,
    n: int,
    config: BatchProcessorConfig,
    cut: float,
    requests: list[BatchRequest] | None = None,
) -> Run:
    with SimulatorProcess(*flags) as sim:
        run = asyncio.run(run_batch(kind, sim.url, n, config, cut, requests))
        run.stats = sim.stats()
    return run


def verdict(checks: list[tuple[bool, str]]) -> str:
    misses = [label for ok, label in checks if not ok]
    return "[green]PASS[/]" if not misses else "[red]MISS[/] " + ", ".join(misses)


def refusals(stats: dict[str, Any]) -> tuple[int, str]:
    """The server's refusals (over its limit, whatever the status), and them by status."""
    by_status: dict[str, int] = stats.get("by_status", {})
    refused = int(stats.get("over_limit", 0))
    detail = " ".join(f"{s}: {n}" for s, n in sorted(by_status.items()) if s != "200")
    return refused, detail or "-"


# A server style in a matrix: label, simulator flags, client kind, the limits a user would give.
Style = tuple[str, tuple[str, ...], str, dict[str, int]]


def style_matrix(
    console: Console,
    title: str,
    styles: list[Style],
    requests: list[BatchRequest],
    ideal: float,
    adaptive_share: float,
) -> None:
    """Each style run twice, its limits given and nothing given (adaptive), against a fresh
    simulator: makespan vs `ideal`, refusals, lost, and the verdict. Targets: limit given
    <= 1.05x ideal and no refusal; adaptive <= 1.15x and refusals <= `adaptive_share`."""
    n, cut = len(requests), 5 * ideal
    table = Table(title=title)
    for col in ("style", "mode", "makespan s", "ideal s", "x ideal", "refusals", "by status"):
        table.add_column(col, justify="right")
    for col in ("refusals %", "lost", "verdict"):
        table.add_column(col, justify="right" if col != "verdict" else "left")
    for label, server, kind, limits in styles:
        for mode in ("limit given", "adaptive"):
            limiter = RateLimiter(**limits) if mode == "limit given" else None  # type: ignore[arg-type]
            config = BatchProcessorConfig(max_concurrency=CONCURRENCY, limiter=limiter)
            run = measure(server, kind, n, config, cut, requests)
            refused, detail = refusals(run.stats)
            ratio = run.makespan / ideal
            if mode == "limit given":
                checks = [(ratio <= 1.05, "> 1.05x"), (refused == 0, "refusals")]
            else:
                share = f"refusals > {adaptive_share:.0%}"
                checks = [(ratio <= 1.15, "> 1.15x"), (refused <= adaptive_share * n, share)]
            checks.append((run.lost == 0, "lost"))
            table.add_row(
                label,
                mode,
                f"{run.makespan:.2f}",
                f"{ideal:.2f}",
                f"{ratio:.2f}x",
                str(refused),
                detail,
                f"{100 * refused / n:.1f}",
                str(run.lost),
                verdict(checks),
            )
            console.print(f"  done: {label} / {mode}: {run.makespan:.1f} s", style="dim")
    console.print(table)


def limits_matrix(console: Console, n: int, rpm: int, only: list[str] | None) -> None:
    ideal = n / (rpm / 60)
    full_bucket = (n - rpm / 60) / (rpm / 60)
    styles: list[Style] = [
        (
            label,
            ("--rpm", str(rpm), "--latency-ms", str(LATENCY_MS), "--seed", "1", *flags),
            kind,
            {"requests_per_minute": rpm},
        )
        for label, flags, kind in STYLES
        if not only or label in only
    ]
    title = (
        f"Server styles: {n} requests, limit {rpm} req/min, {LATENCY_MS} ms latency, "
        f"concurrency {CONCURRENCY}; run cut at {5 * ideal:.0f} s; the server's bucket starts "
        f"full, so a perfect pacer takes {full_bucket:.2f} s ({full_bucket / ideal:.2f}x ideal)"
    )
    style_matrix(console, title, styles, plain_requests(n), ideal, adaptive_share=0.05)


def charged_tokens(request: CompletionRequest) -> int:
    """What the simulator charges a request: its prompt's tokens (chars / 4) + max_tokens."""
    return max(1, -(-len(request.prompt) // 4)) + (request.max_tokens or 0)


def tokens_matrix(console: Console, n: int, only: list[str] | None) -> None:
    requests = token_requests(n)
    total = sum(charged_tokens(r.request) for r in requests)
    per_second = TPM / 60
    ideal = total / per_second
    full_bucket = (total - per_second) / per_second
    styles: list[Style] = [
        (label, ("--latency-ms", str(LATENCY_MS), "--seed", "1", *flags), kind, limits)
        for label, flags, kind, limits in TOKEN_STYLES
        if not only or label in only
    ]
    title = (
        f"Token-limited servers: {n} requests of 10-100 prompt tokens + max_tokens "
        f"{TOKEN_MAX_TOKENS} ({total:,} tokens charged), limit {TPM:,} tokens/min (split "
        f"half/half for in/out), {LATENCY_MS} ms latency, concurrency {CONCURRENCY}; a perfect "
        f"pacer takes {full_bucket:.2f} s ({full_bucket / ideal:.2f}x ideal)"
    )
    style_matrix(console, title, styles, requests, ideal, adaptive_share=0.02)


def queue_config(concurrency: int | str) -> BatchProcessorConfig:
    value: Any = concurrency  # "auto" may not be in the installed version's type yet
    return BatchProcessorConfig(max_concurrency=value)


def queue_matrix(console: Console, n: int) -> None:
    table = Table(
        title=f"Queueing server (2 slots, 200 ms each, ideal 10 req/s): {n} requests, "
        "fixed concurrency vs auto"
    )
    for col in ("concurrency", "req/s", "p50 s", "p95 s", "max queue", "lost"):
        table.add_column(col, justify="right")
    table.add_column("vs best fixed", justify="left")
    rows: dict[str, tuple[float, float, float, int, int] | str] = {}
    for concurrency in QUEUE_CONCURRENCIES:
        try:
            config = queue_config(concurrency)
            # 1 request at a time on 200 ms is 5 req/s; anything slower than 1 req/s is stuck.
            run = measure(QUEUE_FLAGS, "openai", n, config, cut=max(60.0, n))
        except (TypeError, ValueError) as exc:
            rows[str(concurrency)] = f"n/a (not supported: {type(exc).__name__}: {exc})"
            continue
        if len(run.durations) >= 2:
            q = statistics.quantiles(run.durations, n=20, method="inclusive")
            p50, p95 = statistics.median(run.durations), q[18]
        else:
            p50 = p95 = float("nan")
        rows[str(concurrency)] = (
            (n - run.lost) / run.makespan,
            p50,
            p95,
            int(run.stats.get("max_queue_depth", 0)),
            run.lost,
        )
        console.print(f"  done: queue / concurrency {concurrency}", style="dim")
    fixed = {k: v for k, v in rows.items() if k != "auto" and isinstance(v, tuple)}
    # The best fixed concurrency: the highest throughput, and among those within 2% of it
    # (noise), the lowest p95: 4 and 16 both saturate 2 slots, but 16 only adds queueing.
    top = max((v[0] for v in fixed.values()), default=0.0)
    near = [k for k, v in fixed.items() if v[0] >= 0.98 * top]
    best_key = min(near, key=lambda k: fixed[k][2]) if near else None
    for key, row in rows.items():
        if isinstance(row, str):
            table.add_row(key, "n/a", "", "", "", "", row)
            continue
        rps, p50, p95, depth, lost = row
        note = ""
        if best_key is not None:
            best_rps, best_p95 = fixed[best_key][0], fixed[best_key][2]
            if key == best_key:
                note = "best fixed"
            else:
                note = f"{rps / best_rps:.2f}x req/s, {p95 / best_p95:.2f}x p95"
            if key == "auto":
                note += "  " + verdict(
                    [
                        (rps >= 0.9 * best_rps, "< 0.9x req/s"),
                        (p95 <= 2 * best_p95, "> 2x p95"),
                        (lost == 0, "lost"),
                    ]
                )
        table.add_row(key, f"{rps:.2f}", f"{p50:.2f}", f"{p95:.2f}", str(depth), str(lost), note)
    console.print(table)


# A cloud-like API: a high limit it states in headers, no queueing, but latency that varies
# with the length of each answer (100 to 700 ms): does `auto` hold the pace of a fixed 32?
CLOUD_FLAGS = (
    "--limit-style",
    "openai",
    "--rpm",
    "12000",
    "--latency-ms",
    "400",
    "--latency-jitter-ms",
    "300",
    "--seed",
    "5",
)


def cloud_matrix(console: Console, n: int) -> None:
    table = Table(
        title=f"Cloud-like server (12,000 req/min stated, latency 100-700 ms): {n} requests, "
        f"concurrency {CONCURRENCY} (the CLI default) vs auto"
    )
    for col in ("concurrency", "req/s", "p50 s", "p95 s", "lost", f"vs {CONCURRENCY}"):
        table.add_column(col, justify="right")
    base: float | None = None
    for concurrency in (CONCURRENCY, "auto"):
        run = measure(CLOUD_FLAGS, "openai", n, queue_config(concurrency), cut=120.0)
        q = statistics.quantiles(run.durations, n=20, method="inclusive")
        rps = (n - run.lost) / run.makespan
        base = base or rps
        table.add_row(
            str(concurrency),
            f"{rps:.1f}",
            f"{statistics.median(run.durations):.2f}",
            f"{q[18]:.2f}",
            str(run.lost),
            f"{rps / base:.2f}x",
        )
        console.print(f"  done: cloud / concurrency {concurrency}", style="dim")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 + 60 requests, not 400 + 200")
    parser.add_argument("--requests", type=int, help="requests per style run (default 400)")
    parser.add_argument("--queue-requests", type=int, help="requests per queue run (default 200)")
    parser.add_argument("--rpm", type=int, default=1200)
    parser.add_argument("--only", choices=("limits", "tokens", "queue", "cloud"))
    parser.add_argument("--token-requests", type=int, help="requests per token run (200)")
    parser.add_argument(
        "--style",
        action="append",
        choices=[label for label, _, _ in STYLES] + [label for label, *_ in TOKEN_STYLES],
        help="run only this server style (repeatable)",
    )
    args = parser.parse_args()
    n = args.requests or (100 if args.quick else 400)
    nq = args.queue_requests or (60 if args.quick else 200)
    console = Console(width=170)
    if args.only in (None, "limits"):
        limits_matrix(console, n, args.rpm, args.style)
    if args.only in (None, "tokens"):
        tokens_matrix(console, args.token_requests or (60 if args.quick else 200), args.style)
    if args.only in (None, "queue"):
        queue_matrix(console, nq)
    if args.only in (None, "cloud"):
        cloud_matrix(console, 3 * nq)


if __name__ == "__main__":
    main()
