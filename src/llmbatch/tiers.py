"""Service tiers: OpenAI's flex (half price, slower, sometimes refused) beside the standard one.

    request = with_tier(request, "flex")           # `service_tier` in the body it sends
    policy = TierPolicy(fallback="default")        # `--service-tier auto`
    policy.after_refusal(request, refusals=3, waited=12.0)   # -> (request at "default", 0.0)
    served_tier(response)                          # "flex": the tier the reply says served it

A request asks for a tier with `service_tier` in its body (OpenAI: "auto", "default", "flex",
"priority"; Groq: "on_demand", "flex", "auto"), set per line or for a whole run
(`RunConfig.service_tier`). The reply names the tier that served it, which prices it
(`llmbatch.pricing`: flex at the batch price).

A flex tier short of room refuses (`CapacityError`: OpenAI's 429 "Resource Unavailable",
Groq's 498 `capacity_exceeded`). That is no failure of the request and no sign that our pace
is too fast: the limiter is left alone and the engine waits (full jitter, growing from
`base_delay` to `max_delay`, or the server's Retry-After) and sends it again, without
counting the refusal against the request's retries. `fallback` (llmbatch's "auto": flex
first) moves a request to that tier once flex has refused it `max_refusals` times, and
`urgent()` (a deadline run's) moves it to the default tier at once; otherwise it waits up to
`max_wait` seconds of refusals in all, and then the refusal is its result.

Flex answers slowly: OpenAI's guide raises the client timeout to 15 minutes, so a flex
request's attempt is allowed at least `FLEX_TIMEOUT` seconds (`timeout_for`).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .types import CompletionRequest, CompletionResponse

__all__ = [
    "DEFAULT",
    "FLEX",
    "FLEX_CONCURRENCY_FACTOR",
    "FLEX_TIMEOUT",
    "FLEX_WORKERS_FACTOR",
    "LANES",
    "PRIORITY",
    "SERVICE_TIERS",
    "TierPolicy",
    "lane_of",
    "served_tier",
    "tier_of",
    "tier_policy",
    "wire_tier",
    "with_tier",
]

FLEX = "flex"
DEFAULT = "default"
PRIORITY = "priority"
# What `service_tier` (the run's setting) may be. "auto" is llmbatch's: flex first, then the
# standard tier for a request flex keeps refusing (it is sent as "flex", never as OpenAI's
# own "auto", which means "the project's default tier").
SERVICE_TIERS = ("flex", "default", "priority", "auto")
# The lanes an answer comes by (`lane_of`), which are also the price lists that price it
# (`llmbatch.pricing`): a provider batch, or a service tier.
LANES = ("standard", "batch", "flex", "priority")
FLEX_TIMEOUT = 900.0  # seconds: OpenAI's advice for flex requests
# A deadline run that finishes late batches through flex keeps this many times the
# concurrency in flight: flex answers slower (the rate limits still pace it).
FLEX_CONCURRENCY_FACTOR = 4
# ... and has this many times the concurrency in workers: a refused request waits in its
# worker without holding an attempt's slot (`EngineConfig.max_in_flight`), and when flex
# refuses most requests, most of the lane's time is such waits.
FLEX_WORKERS_FACTOR = 16
DEFAULT_MAX_REFUSALS = 3
URGENT_POLL = 0.5  # seconds between looks at `urgent` while a refused request waits
DEFAULT_MAX_WAIT = 3600.0  # seconds of capacity refusals, in all, before one is final


def lane_of(batch_api: bool, tier: str | None) -> str:
    """The lane that answered a line, for stats: "batch", "flex", "priority" or "standard"
    (the default tier, whatever the provider calls it, and replies that name no tier)."""
    if batch_api:
        return "batch"
    if tier is None or tier in ("default", "auto", "on_demand", "standard"):
        return "standard"
    return tier


def wire_tier(setting: str) -> str:
    """The `service_tier` sent for a run's setting: llmbatch's "auto" sends flex first."""
    return FLEX if setting == "auto" else setting


def tier_policy(setting: str | None) -> TierPolicy:
    """The engine's policy for a run's setting: "auto" moves what flex keeps refusing to the
    default tier; otherwise a refusal is waited out."""
    return TierPolicy(fallback="default") if setting == "auto" else TierPolicy()


def tier_of(request: CompletionRequest) -> str | None:
    """The tier `request` asks for (its body's `service_tier`), or None."""
    tier = request.extra.get("service_tier") if request.extra else None
    return tier if isinstance(tier, str) else None


def with_tier(request: CompletionRequest, tier: str, *, replace: bool = False) -> CompletionRequest:
    """`request` asking for `tier`; one that names its own tier keeps it unless `replace`."""
    if tier_of(request) is not None and not replace:
        return request
    extra = dict(request.extra or {})
    extra["service_tier"] = tier
    return dataclasses.replace(request, extra=extra)


def served_tier(response: CompletionResponse | None) -> str | None:
    """The tier the reply says served it (`service_tier` in the body), or None."""
    raw: Any = response.raw if response is not None else None
    tier = raw.get("service_tier") if isinstance(raw, dict) else None
    return tier if isinstance(tier, str) else None


@dataclass(slots=True, frozen=True)
class TierPolicy:
    """How the engine answers a tier's capacity refusal (see the module doc)."""

    fallback: str | None = None
    max_refusals: int = DEFAULT_MAX_REFUSALS
    # A refusal is answered at once and costs nothing, and while a request waits its worker
    # is idle: short waits (full jitter, 0.5 s doubling up to 8 s) keep the lane moving.
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_wait: float = DEFAULT_MAX_WAIT
    # True when the deadline cannot wait for flex any more (`DeadlineRunner.flex_urgent`):
    # a refused request then moves to the default tier at once.
    urgent: Callable[[], bool] | None = field(default=None, compare=False, repr=False)
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def after_refusal(
        self, request: CompletionRequest, refusals: int, waited: float
    ) -> tuple[CompletionRequest, float] | None:
        """What to send after the `refusals`-th capacity refusal of `request`, and after how
        many seconds; None when the refusal is final (`waited` seconds of refusals already).
        A server's Retry-After, when it gave one, replaces the backoff (the caller's)."""
        if self.fallback is not None and refusals >= self.max_refusals:
            return with_tier(request, self.fallback, replace=True), 0.0
        if self.urgent is not None and self.urgent():
            return with_tier(request, DEFAULT, replace=True), 0.0
        ceiling = min(self.max_delay, self.base_delay * (2 ** min(refusals - 1, 30)))
        delay = self.rng.uniform(0.0, ceiling)
        if waited + delay > self.max_wait:
            return None
        return request, delay

    async def wait(self, seconds: float, sleep: Callable[[float], Awaitable[None]]) -> None:
        """Sleep `seconds` after a refusal; with `urgent`, in slices of `URGENT_POLL`, ending
        early once it turns true (the request then moves tier at once, not after its wait)."""
        if self.urgent is None:
            await sleep(seconds)
            return
        left = seconds
        while left > 0 and not self.urgent():
            step = min(left, URGENT_POLL)
            await sleep(step)
            left -= step

    def after_wait(self, request: CompletionRequest) -> CompletionRequest:
        """`request` as sent again after its wait: at the default tier if the deadline
        became urgent meanwhile (no point asking flex once more)."""
        if self.urgent is not None and tier_of(request) == FLEX and self.urgent():
            return with_tier(request, DEFAULT, replace=True)
        return request

    @staticmethod
    def timeout_for(request: CompletionRequest, timeout: float | None) -> float | None:
        """The attempt timeout for `request`: at least `FLEX_TIMEOUT` when it asks for flex."""
        if timeout is None or tier_of(request) != FLEX:
            return timeout
        return max(timeout, FLEX_TIMEOUT)
