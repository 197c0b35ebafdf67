"""`llmbatch run --ray`: the same run, its requests spread over Ray workers.

    await execute_on_ray(args, spec, requests, sink)   # results into the run's one sink

Workers send back finished results and the driver (this process) writes them through the
same `ResultSink` as a local run: resume, exactly-once, the error log and "unfinished" mean
the same. The cache stays in the driver too: `requests` already left out the ids the cache
answered, and the sink stores fresh answers; one SQLite file on one machine, never written by
several processes (or nodes) at once. Ray is imported only here, and only with --ray.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator

from ..budget import Budget
from ..clients import ClientSpec
from ..io.sink import ResultSink
from ..metrics import MetricsListener
from ..pricing import Pricer
from ..types import BatchRequest, BatchResult
from ._common import retry_policy
from .structured import reply_policy
from .usage import UsageError

__all__ = ["execute_on_ray"]


async def execute_on_ray(
    args: argparse.Namespace,
    spec: ClientSpec,
    requests: Iterator[BatchRequest],
    sink: ResultSink,
    *,
    budget: Budget | None = None,
    metrics: MetricsListener | None = None,
) -> None:
    """Run the requests on Ray workers until done, --timeout, or a sink failure (raised).

    With a `budget` (--max-cost), the cluster limiter actor holds its cap and spend, and
    every worker's attempts reserve and settle there."""
    try:
        import ray

        from .. import ray as lray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'llmbatch[ray]'") from None
    started = False
    if not ray.is_initialized():
        ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=False)
        started = True

    def on_results(results: list[BatchResult]) -> None:
        for result in results:
            sink.write(result)

    config = lray.RayRunConfig(
        workers=args.workers,
        concurrency=args.concurrency,
        request_timeout=args.request_timeout,
        retry=retry_policy(args),
        max_outage=args.max_outage,
        replies=reply_policy(args),
    )
    try:
        limiter = lray.ClusterLimiter.create(
            args.rpm,
            args.tpm,
            input_tokens_per_minute=args.itpm,
            output_tokens_per_minute=args.otpm,
            max_cost=None if budget is None else budget.max_cost,
            spent=0.0 if budget is None else budget.spent,
            # The run's pricer warns through the console, which stays here; workers get one
            # with the same prices that logs instead.
            pricer=None
            if budget is None
            else Pricer(budget.pricer.source, provider=budget.pricer.provider, model=args.model),
        )
        if metrics is not None:
            # Results (with their attempt logs) reach the metrics through the sink; the
            # cluster limiter's rate and pause are read from its actor at each scrape.
            metrics.watch(limiter)
        async with asyncio.timeout(args.timeout):
            await lray.run_on_ray(requests, spec, limiter, config, on_results=on_results)
    except TimeoutError:
        pass  # what was not written is counted by the sink as unfinished
    finally:
        if started:
            ray.shutdown()
