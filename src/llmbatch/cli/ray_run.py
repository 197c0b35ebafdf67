"""`llmbatch run --ray`: the same run, its requests spread over Ray workers.

The driver (this process) keeps the journal: workers send back finished lines, so resume
and exactly-once hold as in a local run. Ray is imported only here, and only with --ray.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator

from ..clients import ClientSpec
from ..io.journal import Journal
from ..progress import RichProgress
from ..retry import RetryPolicy
from ..types import BatchRequest
from .precheck import Precheck
from .usage import UsageError

__all__ = ["execute_on_ray"]


async def execute_on_ray(
    args: argparse.Namespace,
    spec: ClientSpec,
    requests: Iterator[BatchRequest],
    journal: Journal,
    check: Precheck,
    progress: RichProgress,
) -> tuple[int, bool]:
    """Run the requests on Ray workers; return (requests left unfinished, interrupted)."""
    try:
        import ray

        from .. import ray as lray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'llmbatch[ray]'") from None
    started = False
    if not ray.is_initialized():
        ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=False)
        started = True
    written = 0

    def on_lines(lines: list[tuple[str, bytes, bool]]) -> None:
        nonlocal written
        for custom_id, line, ok in lines:
            journal.write_line(custom_id, line)
            progress.add(ok)
        written += len(lines)
        journal.sync_if_due()

    config = lray.RayRunConfig(
        workers=args.workers,
        concurrency=args.concurrency,
        request_timeout=args.request_timeout,
        retry=RetryPolicy(max_attempts=max(1, args.max_retries + 1)),
    )
    interrupted = timed_out = False
    progress.start(check.runnable)
    try:
        limiter = lray.ClusterLimiter.create(args.rpm, args.tpm)
        async with asyncio.timeout(args.timeout):
            await lray.run_on_ray(requests, spec, limiter, config, on_lines)
    except TimeoutError:
        timed_out = True
    except asyncio.CancelledError:
        interrupted = True
    finally:
        progress.stop()
        if started:
            ray.shutdown()
    unfinished = check.runnable - written if (timed_out or interrupted) else 0
    return unfinished, interrupted
