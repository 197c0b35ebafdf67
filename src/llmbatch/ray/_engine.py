"""The engine every Ray worker runs: one per process, paced by the cluster limiter."""

from __future__ import annotations

from ..clients._http import ProviderClient
from ..engine import Engine, EngineConfig
from ..events import Admission
from ..retry import RetryPolicy

__all__ = ["worker_engine"]


def worker_engine(
    client: ProviderClient,
    admission: Admission | None,
    concurrency: int,
    request_timeout: float | None,
    retry: RetryPolicy | None,
) -> Engine:
    return Engine(
        client,
        EngineConfig(
            max_concurrency=concurrency,
            request_timeout=request_timeout,
            retry=retry or RetryPolicy(),
            admission=admission,
        ),
    )
