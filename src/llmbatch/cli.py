"""The command line: the only module that reads argv and the environment.

llmbatch simulate --port 8080 --latency-ms 200 --rpm 600 --fail-rate 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from .simulate import Simulator, SimulatorConfig

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    p.add_argument("--rpm", type=_positive_int, help="requests per minute before 429s")
    p.add_argument("--tpm", type=_positive_int, help="tokens per minute before 429s")
    p.add_argument("--fail-rate", type=_rate, default=0.0, help="share of 500/529 replies")
    p.add_argument("--reset-rate", type=_rate, default=0.0, help="share of connection resets")
    p.add_argument("--hang-rate", type=_rate, default=0.0, help="share of requests never answered")
    p.add_argument("--malformed-rate", type=_rate, default=0.0, help="share of broken bodies")
    p.add_argument("--hang-seconds", type=float, default=120.0, help="how long a hang lasts")
    p.add_argument("--api-key-env", help="require the key held by this environment variable")
    p.add_argument("--no-rate-limit-headers", action="store_true", help="omit x-ratelimit-*")
    p.add_argument("--seed", type=int, help="random seed for faults and jitter")


async def _simulate(args: argparse.Namespace) -> int:
    import os

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmbatch",
        description="Run thousands to millions of LLM requests, as fast as the provider allows.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_simulate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "simulate":
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        return asyncio.run(_simulate(args))
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
