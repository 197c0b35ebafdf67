"""What the prompt cache should save on a run, before it is sent (`llmbatch plan`).

    found = estimate(census, provider="anthropic", model="claude-sonnet-4-5", batch=False)
    found.read_tokens, found.write_tokens, found.groups, found.requests

Each shared prefix the census found, if long enough for the provider to cache, is written
once (its warm-up) and read by every other request of its group: on Anthropic the whole
prefix, at the breakpoint; on OpenAI the prefix rounded down to the cache's 128-token steps.
That is the best case: OpenAI's spill to machines that have not seen a prefix (above ~15
requests a minute of one prefix) adds a miss per machine, and a group that comes back after
its TTL is written again. `bench/prompt_cache.py` measures how close runs come.
"""

from __future__ import annotations

from dataclasses import dataclass

from .census import PrefixCensus
from .limits import OPENAI_MIN_TOKENS, OPENAI_STEP_TOKENS, min_cacheable_tokens

__all__ = ["CacheEstimate", "estimate"]


@dataclass(slots=True, frozen=True)
class CacheEstimate:
    """Tokens the provider's cache should serve (`read_tokens`) and take (`write_tokens`,
    of them `write_1h_tokens` into Anthropic's 1-hour cache) over `requests` requests in
    `groups` shared prefixes."""

    groups: int = 0
    requests: int = 0
    read_tokens: int = 0
    write_tokens: int = 0
    write_1h_tokens: int = 0


def estimate(
    census: PrefixCensus, *, provider: str, model: str | None, batch: bool
) -> CacheEstimate:
    """The best-case cache use of the census's shared prefixes (see the module docstring)."""
    minimum = min_cacheable_tokens(provider, model)
    groups = requests = read = written = 0
    for prefix, count in census.groups():
        tokens = prefix.tokens
        if tokens < minimum:
            continue
        if provider != "anthropic":
            steps = (tokens - OPENAI_MIN_TOKENS) // OPENAI_STEP_TOKENS
            tokens = OPENAI_MIN_TOKENS + steps * OPENAI_STEP_TOKENS
        groups += 1
        requests += count
        read += (count - 1) * tokens
        if provider == "anthropic":  # OpenAI bills no write
            written += tokens
    hour = written if batch and provider == "anthropic" else 0
    return CacheEstimate(groups, requests, read, written, hour)
