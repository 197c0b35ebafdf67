"""`llmbatch simulate`: the provider simulator as a server process."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from ..simulate import Simulator, SimulatorConfig
from ._common import EXIT_OK, event_loop_factory, fraction, positive_int

__all__ = ["add_parser", "main"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="run the provider simulator (OpenAI + Anthropic routes) on this machine",
        description="An OpenAI/Anthropic-compatible server with latency, limits and faults. "
        "Prints 'listening on URL' once ready; stops on Ctrl-C or SIGTERM.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="latency per reply")
    p.add_argument("--latency-jitter-ms", type=float, default=0.0, help="+/- uniform jitter")
    p.add_argument("--rpm", type=positive_int, help="requests per minute before 429s")
    p.add_argument("--tpm", type=positive_int, help="tokens per minute before 429s")
    p.add_argument("--fail-rate", type=fraction, default=0.0, help="share of 500/529 replies")
    p.add_argument("--reset-rate", type=fraction, default=0.0, help="share of connection resets")
    p.add_argument(
        "--hang-rate", type=fraction, default=0.0, help="share of requests never answered"
    )
    p.add_argument("--malformed-rate", type=fraction, default=0.0, help="share of broken bodies")
    p.add_argument("--hang-seconds", type=float, default=120.0, help="how long a hang lasts")
    p.add_argument("--api-key-env", help="require the key held by this environment variable")
    p.add_argument("--no-rate-limit-headers", action="store_true", help="omit x-ratelimit-*")
    p.add_argument("--seed", type=int, help="random seed for faults and jitter")


async def _serve(args: argparse.Namespace) -> int:
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    config = SimulatorConfig(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        rpm=args.rpm,
        tpm=args.tpm,
        fail_rate=args.fail_rate,
        reset_rate=args.reset_rate,
        hang_rate=args.hang_rate,
        malformed_rate=args.malformed_rate,
        hang_seconds=args.hang_seconds,
        seed=args.seed,
        api_key=key,
        send_rate_limit_headers=not args.no_rate_limit_headers,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Simulator(config) as sim:
        print(f"listening on {sim.url}", flush=True)
        await stop.wait()
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(_serve(args))
