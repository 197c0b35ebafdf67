"""The engine every Ray worker runs: one per process, paced by the cluster limiter."""

from __future__ import annotations

from ..admission import Admission
from ..breaker import DEFAULT_MAX_OUTAGE, Breaker
from ..clients.provider import ProviderClient
from ..engine import Concurrency, Engine, EngineConfig
from ..replies import ReplyPolicy
from ..retry import RetryPolicy
from ..tiers import TierPolicy

__all__ = ["worker_engine"]


def worker_engine(
    client: ProviderClient,
    limiter: Admission | None,
    concurrency: Concurrency,
    request_timeout: float | None,
    retry: RetryPolicy | None,
    max_outage: float | None = DEFAULT_MAX_OUTAGE,
    budget: Admission | None = None,
    replies: ReplyPolicy | None = None,
    tiers: TierPolicy | None = None,
    breaker: Breaker | None = None,
) -> Engine:
    return Engine(
        client,
        EngineConfig(
            max_concurrency=concurrency,
            request_timeout=request_timeout,
            retry=retry or RetryPolicy(),
            limiter=limiter,
            max_outage=max_outage,
            breaker=breaker,
            budget=budget,
            replies=replies or ReplyPolicy(),
            tiers=tiers or TierPolicy(),
        ),
    )
