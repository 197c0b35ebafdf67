"""Pacing on every kind of server: limit given vs adaptive, and fixed vs `auto` concurrency.

    python bench/pacing.py [--quick] [--requests 400] [--rpm 1200] [--seconds 30]
                            [--only limits|tokens|concurrency] [--style LABEL]
                            [--concurrency N|auto]

Everything is built as a user would build it: library defaults, no hand-set pool sizes.
Each run gets a fresh `llmbatch simulate` process (its bucket starts full).

Matrix 1, server styles at `--rpm` (1200/min) with 50 ms latency, 400 requests, concurrency
`--concurrency` (default: the library's, as a user would run): openai (x-ratelimit-*
headers), anthropic (anthropic-ratelimit-*, AnthropicClient on /v1/messages), retry-after
(only that header), bare (429 with nothing), and a server that answers 503 "overloaded" with
no header over its limit. Modes: "limit given"
(`limiter=RateLimiter(requests_per_minute=rpm)`) and "adaptive" (nothing given).
Ideal makespan: requests / (rpm/60). Targets: adaptive <= 1.15x ideal, refusals <= 5% of
requests, 0 lost; limit given <= 1.05x ideal, 0 refusals, 0 lost. A run is cut at 5x ideal
(what is unfinished then counts as lost).

Matrix 2, token-limited servers (see `tokens_matrix`).

Matrix 3, fixed concurrency 8, 32, 128, 512 vs `auto` on a cloud-like server (limit stated in
headers, 100-700 ms latency whatever the load), a queueing one (2 slots of 200 ms, latency
grows with the queue) and two header-less rate-limited ones (bare 429, 503): each run is cut
at `--seconds` (30) and its throughput is what was answered by then; p50/p95 latency
(`BatchResult.duration`), refusals, the gate's final limit. Best fixed: the highest req/s,
ties within 2% going to the lower p95. Target: auto >= 0.9x the best fixed req/s.
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
from llmbatch.engine import DEFAULT_CONCURRENCY, Concurrency, check_concurrency
from llmbatch.limiter import RateLimiter
from llmbatch.simulate import SimulatorProcess

LATENCY_MS = 50
_PHANTOM_BURSTS = ("--phantom-share", "0.125", "--phantom-every", "8")
_PHANTOM_STEADY = ("--phantom-share", "0.25", "--phantom-every", "0.5")
# style label, simulator flags, client ("openai" or "anthropic")
STYLES = (
    ("openai", ("--limit-style", "openai"), "openai"),
    ("anthropic", ("--limit-style", "anthropic"), "anthropic"),
    ("retry-after", ("--limit-style", "retry-after"), "openai"),
    ("bare", ("--limit-style", "bare"), "openai"),
    ("503 over limit", ("--limit-style", "bare", "--over-limit-status", "503"), "openai"),
)
# A key shared with another client (the simulator's phantom): it spends `share` of the budget,
# a second's worth in one burst every 8 s (a stray refusal each time, for a pacer at the limit),
# or a quarter of it all the time (the limit given is then wrong: it must be learned below).
# label, simulator flags (added to the style's), client, the phantom's share
SHARED_STYLES: tuple[tuple[str, tuple[str, ...], str, float], ...] = (
    ("bare, shared key", ("--limit-style", "bare", *_PHANTOM_BURSTS), "openai", 0.125),
    (
        "503, shared key",
        ("--limit-style", "bare", "--over-limit-status", "503", *_PHANTOM_BURSTS),
        "openai",
        0.125,
    ),
    (
        "retry-after, shared key",
        ("--limit-style", "retry-after", *_PHANTOM_BURSTS),
        "openai",
        0.125,
    ),
    ("openai, shared key", ("--limit-style", "openai", *_PHANTOM_BURSTS), "openai", 0.125),
    ("bare, shared always", ("--limit-style", "bare", *_PHANTOM_STEADY), "openai", 0.25),
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
        "tokens, bare, shared key",
        ("--tpm", str(TPM), "--limit-style", "bare", *_PHANTOM_BURSTS),
        "openai",
        {"tokens_per_minute": TPM},
    ),
    (
        "tokens, openai headers",
        ("--tpm", str(TPM), "--limit-style", "openai"),
        "openai",
        {"tokens_per_minute": TPM},
    ),
)


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


def plain_requests(n: int, max_tokens: int | None = 16) -> list[BatchRequest]:
    return [
        BatchRequest(str(i), CompletionRequest(prompt=f"question {i}", max_tokens=max_tokens))
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


MODES = ("limit given", "adaptive")
# A server style in a matrix: label, simulator flags, client kind, the limits a user would give.
Style = tuple[str, tuple[str, ...], str, dict[str, int]]


def style_matrix(
    console: Console,
    title: str,
    styles: list[Style],
    requests: list[BatchRequest],
    ideal: float,
    adaptive_share: float,
    concurrency: Concurrency,
    modes: tuple[str, ...] = MODES,
    shared: dict[str, float] | None = None,
) -> None:
    """Each style run twice, its limits given and nothing given (adaptive), against a fresh
    simulator: makespan vs `ideal`, refusals, lost, and the verdict. Targets: limit given
    <= 1.05x ideal and no refusal; adaptive <= 1.15x and refusals <= `adaptive_share`.
    A style in `shared` (label: the share another client spends on the key) is measured
    against the ideal of what is left, and refusals are then bounded as adaptive ones."""
    n, cut = len(requests), 5 * ideal / (1 - max((shared or {}).values(), default=0.0))
    table = Table(title=title)
    for col in ("style", "mode", "makespan s", "ideal s", "x ideal", "refusals", "by status"):
        table.add_column(col, justify="right")
    for col in ("refusals %", "lost", "verdict"):
        table.add_column(col, justify="right" if col != "verdict" else "left")
    for label, server, kind, limits in styles:
        share = (shared or {}).get(label, 0.0)
        style_ideal = ideal / (1 - share)
        for mode in modes:
            limiter = RateLimiter(**limits) if mode == "limit given" else None  # type: ignore[arg-type]
            config = BatchProcessorConfig(max_concurrency=concurrency, limiter=limiter)
            run = measure(server, kind, n, config, cut, requests)
            refused, detail = refusals(run.stats)
            ratio = run.makespan / style_ideal
            if mode == "limit given" and share:
                checks = [
                    (ratio <= 1.1, "> 1.1x"),
                    (refused <= adaptive_share * n, f"refusals > {adaptive_share:.0%}"),
                ]
            elif mode == "limit given":
                checks = [(ratio <= 1.05, "> 1.05x"), (refused == 0, "refusals")]
            else:
                share = f"refusals > {adaptive_share:.0%}"
                checks = [(ratio <= 1.15, "> 1.15x"), (refused <= adaptive_share * n, share)]
            checks.append((run.lost == 0, "lost"))
            table.add_row(
                label,
                mode,
                f"{run.makespan:.2f}",
                f"{style_ideal:.2f}",
                f"{ratio:.2f}x",
                str(refused),
                detail,
                f"{100 * refused / n:.1f}",
                str(run.lost),
                verdict(checks),
            )
            console.print(f"  done: {label} / {mode}: {run.makespan:.1f} s", style="dim")
    console.print(table)


def limits_matrix(
    console: Console,
    n: int,
    rpm: int,
    only: list[str] | None,
    concurrency: Concurrency,
    modes: tuple[str, ...] = MODES,
) -> None:
    ideal = n / (rpm / 60)
    full_bucket = (n - rpm / 60) / (rpm / 60)
    all_styles = [(label, flags, kind) for label, flags, kind in STYLES]
    all_styles += [(label, flags, kind) for label, flags, kind, _ in SHARED_STYLES]
    styles: list[Style] = [
        (
            label,
            ("--rpm", str(rpm), "--latency-ms", str(LATENCY_MS), "--seed", "1", *flags),
            kind,
            {"requests_per_minute": rpm},
        )
        for label, flags, kind in all_styles
        if not only or label in only
    ]
    shared = {label: share for label, _, _, share in SHARED_STYLES}
    title = (
        f"Server styles: {n} requests, limit {rpm} req/min, {LATENCY_MS} ms latency, "
        f"concurrency {concurrency}; run cut at {5 * ideal:.0f} s; the server's bucket starts "
        f"full, so a perfect pacer takes {full_bucket:.2f} s ({full_bucket / ideal:.2f}x ideal); "
        "shared key: another client spends 12.5% of the budget (a second's worth every 8 s) "
        "or 25% (all the time), ideal = what is left"
    )
    style_matrix(console, title, styles, plain_requests(n), ideal, 0.05, concurrency, modes, shared)
    # The same header-less servers with no max_tokens, as most users send: the answers use
    # more tokens than the estimate charged at admission (prompt only), so a pacer that learns
    # a token rate from estimates but is charged with the usage crawls after its first cut
    # (0.37x ideal before that was fixed).
    unbounded = [s for s in styles if s[0] in ("bare", "retry-after", "503 over limit")]
    if unbounded:
        title = f"The same, header-less, no max_tokens (answers ~20 tokens; {n} requests)"
        requests = plain_requests(n, max_tokens=None)
        style_matrix(console, title, unbounded, requests, ideal, 0.05, concurrency, modes)


def charged_tokens(request: CompletionRequest) -> int:
    """What the simulator charges a request: its prompt's tokens (chars / 4) + max_tokens."""
    return max(1, -(-len(request.prompt) // 4)) + (request.max_tokens or 0)


def tokens_matrix(
    console: Console,
    n: int,
    only: list[str] | None,
    concurrency: Concurrency,
    modes: tuple[str, ...] = MODES,
) -> None:
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
        f"half/half for in/out), {LATENCY_MS} ms latency, concurrency {concurrency}; a perfect "
        f"pacer takes {full_bucket:.2f} s ({full_bucket / ideal:.2f}x ideal)"
    )
    shared = {label: 0.125 for label, *_ in TOKEN_STYLES if "shared" in label}
    style_matrix(console, title, styles, requests, ideal, 0.02, concurrency, modes, shared)


def queue_config(concurrency: int | str) -> BatchProcessorConfig:
    value: Any = concurrency  # "auto" may not be in the installed version's type yet
    return BatchProcessorConfig(max_concurrency=value)


# Server styles for fixed concurrency vs `auto` (label, simulator flags, what it is).
CONCURRENCY_STYLES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "cloud-like",
        (
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
        ),
        "12,000 req/min stated in headers, 100-700 ms whatever the load: the best is "
        "what the limit allows (200 req/s)",
    ),
    (
        "queueing",
        QUEUE_FLAGS,
        "2 slots of 200 ms, no refusals (llama.cpp-like): 10 req/s at best, more in "
        "flight only queues",
    ),
    (
        "bare 429",
        ("--limit-style", "bare", "--rpm", "1200", "--latency-ms", "50", "--seed", "1"),
        "1,200 req/min, refusals with no header at all, 50 ms: the rate limiter's job",
    ),
    (
        "503 over limit",
        (
            "--limit-style",
            "bare",
            "--over-limit-status",
            "503",
            "--rpm",
            "1200",
            "--latency-ms",
            "50",
            "--seed",
            "1",
        ),
        "the same, refused with 503 overloaded",
    ),
)
CONCURRENCY_LEVELS: tuple[int | str, ...] = (8, 32, 128, 512, "auto")


@dataclass
class Span:
    """A run bounded by time: requests answered in `seconds`, their latencies, refusals."""

    ok: int
    lost: int
    durations: list[float]
    refused: int
    limit: int | None  # the auto gate's limit at the end
    late: float = 0.0  # req/s in the second half of the run: the pace once ramped up


async def run_span(url: str, concurrency: int | str, seconds: float) -> tuple[Span, float]:
    # More requests than any setting can finish: the run is cut at `seconds`, and what was
    # answered by then is the throughput (slow settings do not run for minutes).
    requests = plain_requests(int(seconds * 400))
    async with make_client("openai", url) as client:
        processor = BatchProcessor(client, queue_config(concurrency))
        start, wall = time.perf_counter(), time.time()
        results = await processor.aprocess_batch(requests, timeout=seconds)
        elapsed = time.perf_counter() - start
    ok = [r for r in results if r.ok]
    half = wall + elapsed / 2
    late = sum(1 for r in ok if r.timing is not None and r.timing.finished_at >= half)
    lost = sum(
        1 for r in results if r.error is not None and type(r.error).__name__ != "BatchTimeoutError"
    )
    gate = processor.engine.gate
    span = Span(len(ok), lost, [r.duration for r in ok], 0, gate.limit if gate else None)
    span.late = late / (elapsed / 2)
    return span, elapsed


def concurrency_matrix(console: Console, seconds: float, only: list[str] | None) -> None:
    """Each style x fixed 8/32/128/512 and auto, each run cut at `seconds`."""
    table = Table(
        title=f"Fixed concurrency vs auto: requests answered in {seconds:.0f} s runs, "
        "library defaults otherwise (adaptive rate limiter); best fixed = the highest req/s, "
        "ties within 2% to the lower p95; 2nd half: req/s in the run's second half vs the best "
        "fixed's (the pace once ramped up). Target: auto >= 0.9x the best fixed"
    )
    for col in ("style", "concurrency", "req/s", "vs best", "2nd half", "p50 s", "p95 s"):
        table.add_column(col, justify="right")
    for col in ("refusals", "lost", "auto limit", "verdict"):
        table.add_column(col, justify="right" if col != "verdict" else "left")
    for label, flags, _about in CONCURRENCY_STYLES:
        if only and label not in only:
            continue
        rows: dict[str, tuple[float, float, float, Span]] = {}
        for concurrency in CONCURRENCY_LEVELS:
            with SimulatorProcess(*flags) as sim:
                span, elapsed = asyncio.run(run_span(sim.url, concurrency, seconds))
                span.refused = refusals(sim.stats())[0]
            if len(span.durations) >= 2:
                q = statistics.quantiles(span.durations, n=20, method="inclusive")
                p50, p95 = statistics.median(span.durations), q[18]
            else:
                p50 = p95 = float("nan")
            rows[str(concurrency)] = (span.ok / elapsed, p50, p95, span)
            console.print(
                f"  done: {label} / {concurrency}: {span.ok / elapsed:.1f} req/s", style="dim"
            )
        fixed = {k: v for k, v in rows.items() if k != "auto"}
        top = max(v[0] for v in fixed.values())
        best = min((k for k, v in fixed.items() if v[0] >= 0.98 * top), key=lambda k: fixed[k][2])
        best_rps, best_late = fixed[best][0], fixed[best][3].late
        for key, (rps, p50, p95, span) in rows.items():
            verdict_text = ""
            if key == "auto":
                verdict_text = verdict(
                    [(rps >= 0.9 * best_rps, "< 0.9x req/s"), (span.lost == 0, "lost")]
                )
            table.add_row(
                label if key == "8" else "",
                key + (" (best)" if key == best else ""),
                f"{rps:.1f}",
                f"{rps / best_rps:.2f}x",
                f"{span.late / best_late:.2f}x",
                f"{p50:.2f}",
                f"{p95:.2f}",
                str(span.refused),
                str(span.lost),
                "" if span.limit is None else str(span.limit),
                verdict_text,
            )
        table.add_section()
    console.print(table)
    for label, _, about in CONCURRENCY_STYLES:
        if not only or label in only:
            console.print(f"  {label}: {about}")


def concurrency_arg(text: str) -> Concurrency:
    value: Concurrency = "auto" if text == "auto" else int(text)
    check_concurrency(value)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="100 + 60 requests and 10 s concurrency runs, not 400 + 200 and 30 s",
    )
    parser.add_argument("--requests", type=int, help="requests per style run (default 400)")
    parser.add_argument(
        "--seconds", type=float, help="length of each concurrency run (default 30, quick 10)"
    )
    parser.add_argument("--rpm", type=int, default=1200)
    parser.add_argument("--only", choices=("limits", "tokens", "concurrency"))
    parser.add_argument("--token-requests", type=int, help="requests per token run (200)")
    parser.add_argument(
        "--style",
        action="append",
        choices=[label for label, _, _ in STYLES]
        + [label for label, *_ in TOKEN_STYLES]
        + [label for label, *_ in SHARED_STYLES]
        + [label for label, *_ in CONCURRENCY_STYLES],
        help="run only this server style (repeatable)",
    )
    parser.add_argument(
        "--concurrency",
        type=concurrency_arg,
        default=DEFAULT_CONCURRENCY,
        help=f"of matrices 1 and 2 (default: the library's, {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--mode", choices=MODES, help="run only this mode of the style matrices (default both)"
    )
    args = parser.parse_args()
    n = args.requests or (100 if args.quick else 400)
    console = Console(width=170)
    modes = (args.mode,) if args.mode else MODES
    if args.only in (None, "limits"):
        limits_matrix(console, n, args.rpm, args.style, args.concurrency, modes)
    if args.only in (None, "tokens"):
        tokens_n = args.token_requests or (60 if args.quick else 200)
        tokens_matrix(console, tokens_n, args.style, args.concurrency, modes)
    if args.only in (None, "concurrency"):
        concurrency_matrix(console, args.seconds or (10.0 if args.quick else 30.0), args.style)


if __name__ == "__main__":
    main()
