"""`llmbatch simulate`: the provider simulator as a server process."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from ..simulate import LIMIT_STYLES, OVER_LIMIT_STATUSES, Simulator, SimulatorConfig
from ._common import (
    EXIT_OK,
    EXIT_USAGE,
    event_loop_factory,
    fraction,
    positive_float,
    positive_int,
)

__all__ = ["add_parser", "main"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="run the provider simulator (OpenAI + Anthropic routes) on this machine",
        description="An OpenAI/Anthropic-compatible server with latency, limits and faults. "
        "Prints 'listening on URL' once ready; stops on Ctrl-C or SIGTERM. "
        "Counters at GET /stats, zeroed by POST /stats/reset.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="latency per reply")
    p.add_argument("--latency-jitter-ms", type=float, default=0.0, help="+/- uniform jitter")
    p.add_argument("--rpm", type=positive_int, help="requests per minute before 429s")
    p.add_argument(
        "--tpm", type=positive_int, help="tokens per minute (prompt + max_tokens) before 429s"
    )
    p.add_argument("--itpm", type=positive_int, help="input (prompt) tokens per minute")
    p.add_argument(
        "--otpm",
        type=positive_int,
        help="output tokens per minute, charged from max_tokens at admission and settled "
        "with the real output, as Anthropic does",
    )
    p.add_argument(
        "--limit-style",
        choices=LIMIT_STYLES,
        default="openai",
        help="how limits are told: openai (x-ratelimit-* on every reply, retry-after and "
        "retry-after-ms on refusals; anthropic-ratelimit-* on /v1/messages), anthropic "
        "(anthropic-ratelimit-* with input/output tokens apart, retry-after), retry-after "
        "(only that header, on refusals), bare (no header at all), queue (no limits: "
        "--slots requests served at a time, the rest wait in order). Gemini's routes send no "
        "header: a wait told is put in the 429's RetryInfo. Default openai",
    )
    p.add_argument(
        "--over-limit-status",
        type=int,
        choices=OVER_LIMIT_STATUSES,
        default=429,
        help="status of an answer over a rate limit: 429, or 503/529 'overloaded' (default 429)",
    )
    p.add_argument(
        "--slots",
        type=positive_int,
        default=1,
        help="queue style: requests generated at once, each for --latency-ms (default 1)",
    )
    p.add_argument("--fail-rate", type=fraction, default=0.0, help="share of 500/529 replies")
    p.add_argument(
        "--flex-refusal-rate",
        type=fraction,
        default=0.0,
        help="share of service_tier=flex requests refused for capacity (default 0)",
    )
    p.add_argument(
        "--flex-refusal-status",
        type=int,
        choices=(429, 498),
        default=429,
        help="status of a flex refusal: 429 'Resource Unavailable' (OpenAI) or 498 "
        "capacity_exceeded (Groq); default 429",
    )
    p.add_argument(
        "--flex-latency-factor",
        type=float,
        default=3.0,
        help="flex requests take this many times --latency-ms (default 3)",
    )
    p.add_argument(
        "--overload-rate",
        type=fraction,
        default=0.0,
        help="share of requests answered 'overloaded' at once, whatever the limits: "
        "503 on OpenAI routes, 529 on /v1/messages",
    )
    p.add_argument("--reset-rate", type=fraction, default=0.0, help="share of connection resets")
    p.add_argument(
        "--hang-rate", type=fraction, default=0.0, help="share of requests never answered"
    )
    p.add_argument("--malformed-rate", type=fraction, default=0.0, help="share of broken bodies")
    p.add_argument("--hang-seconds", type=float, default=120.0, help="how long a hang lasts")
    p.add_argument("--api-key-env", help="require the key held by this environment variable")
    p.add_argument(
        "--phantom-share",
        type=fraction,
        default=0.0,
        metavar="F",
        help="a key shared with another client: it takes this share of every limit "
        "(default 0), in one burst every --phantom-every seconds",
    )
    p.add_argument(
        "--phantom-every",
        type=positive_float,
        default=5.0,
        metavar="S",
        help="seconds between the other client's bursts (default 5)",
    )
    p.add_argument(
        "--outage-at",
        type=float,
        metavar="S",
        help="go down S seconds after the first request (again after each POST /stats/reset): "
        "the port refuses connections and open ones are cut",
    )
    p.add_argument(
        "--outage-for", type=positive_float, metavar="S", help="how long the outage lasts"
    )
    p.add_argument("--seed", type=int, help="random seed for faults and jitter")
    p.add_argument(
        "--echo-credentials",
        type=int,
        metavar="N",
        help="answer every request 401 echoing the credentials received, minus their first "
        "N characters (a misbehaving gateway)",
    )
    p.add_argument(
        "--reject-json-schema",
        action="store_true",
        help="answer response_format json_schema with HTTP 500, as llama.cpp's server does",
    )
    _add_structured_arguments(p)
    _add_batch_arguments(p)
    _add_prompt_cache(p)


def _add_structured_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("structured output faults (drawn per request body)")
    g.add_argument(
        "--invalid-rate",
        type=fraction,
        default=0.0,
        help="share of schema replies that parse but break the schema",
    )
    g.add_argument(
        "--refusal-rate", type=fraction, default=0.0, help="share of chat replies refused"
    )
    g.add_argument(
        "--truncate-rate",
        type=fraction,
        default=0.0,
        help="share of chat replies cut off (finish_reason length / stop_reason max_tokens)",
    )


def _add_batch_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "batch APIs",
        "OpenAI /v1/files + /v1/batches and Anthropic /v1/messages/batches, on a scaled clock: "
        "a batch moves validating -> in_progress -> finalizing -> completed (Anthropic: "
        "in_progress -> ended) in about --batch-seconds, its lines finishing one by one.",
    )
    g.add_argument(
        "--batch-seconds",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="how long a batch takes from create to completed (default 2.0)",
    )
    g.add_argument(
        "--batch-expire-seconds",
        type=positive_float,
        metavar="S",
        help="the scaled 24 h completion window: a batch not done by then expires with the "
        "lines finished so far (default 5 x --batch-seconds)",
    )
    g.add_argument(
        "--batch-error-rate",
        type=fraction,
        default=0.0,
        metavar="F",
        help="share of batch lines answered with an error (OpenAI: status 500 server_error "
        "in the error file; Anthropic: result errored, api_error)",
    )
    g.add_argument(
        "--batch-expire-after",
        type=fraction,
        metavar="F",
        help="every batch expires once this fraction of its lines has finished: the rest "
        "are batch_expired (OpenAI error file) / expired (Anthropic)",
    )
    g.add_argument(
        "--batch-fail-validation",
        action="store_true",
        help="every OpenAI batch fails validation (status failed, errors.data); every "
        "Anthropic create is refused with 400 (a bad line fails a batch without this flag)",
    )
    g.add_argument(
        "--batch-stall-rate",
        type=fraction,
        default=0.0,
        metavar="F",
        help="share of batches that finish nothing (stay in_progress) until cancelled or expired",
    )
    g.add_argument(
        "--batch-delay-median",
        type=float,
        default=0.0,
        metavar="S",
        help="add a heavy-tailed (lognormal) delay of this median to each batch's duration, "
        "seeded by --seed (default 0: none)",
    )
    g.add_argument(
        "--batch-delay-sigma",
        type=float,
        default=1.0,
        metavar="X",
        help="spread (sigma of the log) of --batch-delay-median (default 1.0)",
    )
    g.add_argument(
        "--batch-max-requests",
        type=positive_int,
        metavar="N",
        help="requests per batch allowed (default the providers' 50,000 / 100,000)",
    )
    g.add_argument(
        "--batch-max-bytes",
        type=positive_int,
        metavar="N",
        help="bytes per OpenAI input file / Anthropic create body (default 200 MB / 256 MB)",
    )
    g.add_argument(
        "--batch-enqueued-tokens",
        type=positive_int,
        metavar="N",
        help="OpenAI's enqueued-token limit per model: a batch created while the live "
        "batches of its model hold more fails with token_limit_exceeded (default: none)",
    )
    g.add_argument(
        "--batch-lose-create",
        type=positive_int,
        metavar="N",
        help="carry out the N-th batch create but answer it 529 (Anthropic) / 500 (OpenAI): "
        "a create whose answer was lost",
    )
    g.add_argument(
        "--batch-refuse-create",
        type=positive_int,
        metavar="N",
        help="answer the N-th batch create 529 (Anthropic) / 500 (OpenAI) without creating it",
    )
    g.add_argument(
        "--batch-list-status",
        type=int,
        metavar="STATUS",
        help="answer every listing of batches and files with this status (e.g. 403: a key "
        "without list permission)",
    )


def _add_prompt_cache(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("prompt caches (OpenAI automatic, Anthropic cache_control)")
    g.add_argument(
        "--no-prompt-cache",
        action="store_true",
        help="cache nothing: usage never reports cached or cache-write tokens",
    )
    g.add_argument(
        "--cache-machines",
        type=positive_int,
        default=8,
        metavar="N",
        help="OpenAI: machines a prefix is routed over (by prefix hash + prompt_cache_key)",
    )
    g.add_argument(
        "--cache-machine-tokens",
        type=positive_int,
        default=1_000_000,
        metavar="N",
        help="OpenAI: tokens of cache entries one machine holds (least recently used out)",
    )
    g.add_argument(
        "--cache-spill-rpm",
        type=float,
        default=15.0,
        metavar="R",
        help="OpenAI: requests a minute of one prefix+key above which they spill to other "
        "machines (default 15)",
    )
    g.add_argument(
        "--cache-ttl",
        type=float,
        default=300.0,
        metavar="S",
        help="OpenAI: seconds an entry lives after its last use (default 300; an Anthropic "
        "entry lives its breakpoint's ttl, 5m or 1h)",
    )


def _config(args: argparse.Namespace) -> SimulatorConfig:
    if (args.outage_at is None) != (args.outage_for is None):
        raise ValueError("--outage-at and --outage-for go together")
    if args.slots != 1 and args.limit_style != "queue":
        raise ValueError("--slots is for --limit-style queue")
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    return SimulatorConfig(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        rpm=args.rpm,
        tpm=args.tpm,
        itpm=args.itpm,
        otpm=args.otpm,
        limit_style=args.limit_style,
        over_limit_status=args.over_limit_status,
        slots=args.slots,
        fail_rate=args.fail_rate,
        overload_rate=args.overload_rate,
        reset_rate=args.reset_rate,
        hang_rate=args.hang_rate,
        malformed_rate=args.malformed_rate,
        phantom_share=args.phantom_share,
        phantom_every=args.phantom_every,
        outage_at=args.outage_at,
        outage_for=args.outage_for or 0.0,
        hang_seconds=args.hang_seconds,
        seed=args.seed,
        api_key=key,
        batch_seconds=args.batch_seconds,
        batch_expire_seconds=args.batch_expire_seconds,
        batch_error_rate=args.batch_error_rate,
        batch_expire_after=args.batch_expire_after,
        batch_fail_validation=args.batch_fail_validation,
        batch_stall_rate=args.batch_stall_rate,
        batch_delay_median=args.batch_delay_median,
        batch_delay_sigma=args.batch_delay_sigma,
        batch_max_requests=args.batch_max_requests,
        batch_max_bytes=args.batch_max_bytes,
        batch_enqueued_tokens=args.batch_enqueued_tokens,
        batch_lose_create=args.batch_lose_create,
        batch_refuse_create=args.batch_refuse_create,
        batch_list_status=args.batch_list_status,
        invalid_rate=args.invalid_rate,
        refusal_rate=args.refusal_rate,
        truncate_rate=args.truncate_rate,
        echo_credentials=args.echo_credentials,
        reject_json_schema=args.reject_json_schema,
        flex_refusal_rate=args.flex_refusal_rate,
        flex_refusal_status=args.flex_refusal_status,
        flex_latency_factor=args.flex_latency_factor,
        prompt_cache=not args.no_prompt_cache,
        cache_machines=args.cache_machines,
        cache_machine_tokens=args.cache_machine_tokens,
        cache_spill_rpm=args.cache_spill_rpm,
        cache_ttl=args.cache_ttl,
    )


async def _serve(config: SimulatorConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Simulator(config) as sim:
        print(f"listening on {sim.url}", flush=True)
        await stop.wait()
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
    except ValueError as exc:
        # The config checks combinations argparse cannot (e.g. queue style with --rpm).
        print(f"llmbatch simulate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(_serve(config))
