"""Service tiers in the simulator: OpenAI's flex (and Groq's), slower and sometimes refused.

    tiers = Tiers(config, rng, counters)
    refused = tiers.refusal(body)             # (status, error body) when flex is short now
    delay_ms *= tiers.latency_factor(body)    # flex is slower
    payload["service_tier"] = tiers.served(body)

A request asks for a tier with `service_tier` in its body. "flex" is answered
`flex_latency_factor` times slower than the configured latency, and refused at
`flex_refusal_rate` before any rate limit is charged: with 429 and a "Resource Unavailable"
error (OpenAI) or, with `flex_refusal_status` 498, Groq's `capacity_exceeded`. The reply says
which tier served it (`service_tier`: "flex", "priority", or "default" for "auto" and
"default"), as OpenAI's does when the request set one.
"""

from __future__ import annotations

import random
from typing import Any

from .counters import Counters

__all__ = ["FLEX_REFUSAL_STATUSES", "Tiers", "requested_tier"]

FLEX_REFUSAL_STATUSES = (429, 498)  # OpenAI's "Resource Unavailable", Groq's capacity_exceeded


def requested_tier(body: dict[str, Any]) -> str | None:
    tier = body.get("service_tier")
    return tier if isinstance(tier, str) else None


class Tiers:
    """The tier logic of one simulator (its own random stream is the server's)."""

    def __init__(self, refusal_rate: float, refusal_status: int, latency_factor: float,
                 rng: random.Random, counters: Counters) -> None:  # fmt: skip
        self.refusal_rate = refusal_rate
        self.refusal_status = refusal_status
        self.factor = latency_factor
        self.rng = rng
        self.counters = counters

    def refusal(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """The refusal of a flex request when flex capacity is short this time, else None."""
        if requested_tier(body) != "flex":
            return None
        self.counters.flex_requests += 1
        if not self.refusal_rate or self.rng.random() >= self.refusal_rate:
            return None
        self.counters.flex_refused += 1
        if self.refusal_status == 498:
            kind, message = "capacity_exceeded", "Flex tier capacity exceeded. Try again later."
        else:
            kind, message = "resource_unavailable", "Resource Unavailable. Try again later."
        error = {"message": message, "type": kind, "param": None, "code": kind}
        return self.refusal_status, {"error": error}

    def latency_factor(self, body: dict[str, Any]) -> float:
        return self.factor if requested_tier(body) == "flex" else 1.0

    def served(self, body: dict[str, Any]) -> str | None:
        """The tier the reply reports, or None when the request named none."""
        tier = requested_tier(body)
        if tier is None:
            return None
        return tier if tier in ("flex", "priority") else "default"
