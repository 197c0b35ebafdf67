"""Limit styles: how a server tells its clients about its limits, from everything to nothing.

    style = STYLES["retry-after"]
    style.success_headers(OPENAI, limits.states())     # {}: nothing on successes
    style.refusal_headers(OPENAI, limits.states(), 0.4) # {"retry-after": "1"}

Real servers differ most in what they say when they refuse: OpenAI sends `x-ratelimit-*`
on every reply plus `retry-after`/`retry-after-ms`; Anthropic sends `anthropic-ratelimit-*`
with input and output tokens apart; gateways and proxies often send only `retry-after`,
or nothing at all; self-hosted servers (llama.cpp, vLLM, Ollama) do not refuse, they queue
(`queue`, served by `llmbatch.fifo`). The header names and formats belong to the dialects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .config import LimitStyleName
from .dialects import ANTHROPIC, Dialect
from .limits import BucketState

__all__ = ["STYLES", "LimitStyle"]


@dataclass(frozen=True, slots=True)
class LimitStyle:
    """`family`: whose rate-limit headers are sent ("route": the route's own dialect)."""

    name: LimitStyleName
    family: Literal["route", "anthropic"] | None
    retry_after: bool
    retry_after_ms: bool
    queue: bool = False

    def success_headers(self, dialect: Dialect, states: list[BucketState]) -> dict[str, str]:
        if self.family is None or not states:
            return {}
        return (ANTHROPIC if self.family == "anthropic" else dialect).limit_headers(states)

    def refusal_headers(
        self, dialect: Dialect, states: list[BucketState], wait: float
    ) -> dict[str, str]:
        headers = self.success_headers(dialect, states)
        if self.retry_after:
            # Integer seconds, rounded up: waiting less would be refused again.
            headers["retry-after"] = str(max(1, math.ceil(wait)))
        if self.retry_after_ms:
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        return headers


STYLES: dict[LimitStyleName, LimitStyle] = {
    "openai": LimitStyle("openai", "route", retry_after=True, retry_after_ms=True),
    "anthropic": LimitStyle("anthropic", "anthropic", retry_after=True, retry_after_ms=False),
    "retry-after": LimitStyle("retry-after", None, retry_after=True, retry_after_ms=False),
    "bare": LimitStyle("bare", None, retry_after=False, retry_after_ms=False),
    "queue": LimitStyle("queue", None, retry_after=False, retry_after_ms=False, queue=True),
}
