"""What the realtime path of a run can do, and the deadline policy of a run, from its config.

capacity = capacity_of(config, latency=1.2)       # RealtimeCapacity under the limits
policy = deadline_policy(deadline, "cost", now)   # allowances scaled to the time given
"""

from __future__ import annotations

from ..deadline import (
    DEFAULT_CANCEL_TIME,
    DEFAULT_MIN_MARGIN,
    DeadlinePolicy,
    Prefer,
    RealtimeCapacity,
)
from .config import RunConfig

__all__ = ["ALLOWANCE_SHARE", "capacity_of", "deadline_policy"]

# What a plan assumes "auto" keeps in flight: it may reach more (up to 256), but only where
# latency allows, so a plan counts on the old fixed default's 32.
AUTO_PLANNED = 32
ALLOWANCE_SHARE = 0.05  # of the time given, at most, for each of the margin and the cancel


def capacity_of(config: RunConfig, latency: float | None) -> RealtimeCapacity:
    """What the realtime path can do under the run's limits (latency None: unknown)."""
    concurrency = config.concurrency
    return RealtimeCapacity(
        rpm=config.rpm,
        tpm=config.tpm,
        itpm=config.itpm,
        otpm=config.otpm,
        concurrency=concurrency if isinstance(concurrency, int) else AUTO_PLANNED,
        latency=latency,
    )


def deadline_policy(deadline: float, prefer: Prefer, now: float) -> DeadlinePolicy:
    """The policy for a run given `deadline - now` seconds: the fixed margin and the time
    allowed for a cancel are each at most a twentieth of that (a run given minutes must not
    spend them on allowances meant for a run given hours)."""
    window = max(0.0, deadline - now)
    return DeadlinePolicy(
        deadline,
        prefer,
        min_margin=min(DEFAULT_MIN_MARGIN, ALLOWANCE_SHARE * window),
        cancel_time=min(DEFAULT_CANCEL_TIME, ALLOWANCE_SHARE * window),
    )
