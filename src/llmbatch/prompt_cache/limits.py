"""What each provider's prompt cache will take: minimum lengths, breakpoints, TTLs.

    min_cacheable_tokens("anthropic", "claude-haiku-4-5")   # 4096
    min_cacheable_tokens("openai", "gpt-4o-mini")           # 1024

Shared by the request transform (which leaves a prefix under the minimum alone) and by the
simulator (which caches nothing under it), so both read the providers' rules from one table.

The figures are the providers' documentation as of late 2026: OpenAI caches prompts of
1,024 tokens and more, in 128-token steps. Anthropic caches the prefix up to a
`cache_control` breakpoint (at most 4 per request) when it holds at least the model's
minimum: 1,024 tokens for most Sonnet and Opus models, 2,048 for Sonnet 4.6 and the Haiku 3
models, 4,096 for Opus 4.5/4.6 and Haiku 4.5. A model not in the table gets 1,024 (a
breakpoint under a model's real minimum is ignored by the API, never refused).
"""

from __future__ import annotations

__all__ = [
    "ANTHROPIC_MAX_BREAKPOINTS",
    "OPENAI_MIN_TOKENS",
    "OPENAI_STEP_TOKENS",
    "TTL_SECONDS",
    "min_cacheable_tokens",
]

OPENAI_MIN_TOKENS = 1024
OPENAI_STEP_TOKENS = 128
ANTHROPIC_MAX_BREAKPOINTS = 4
# Anthropic's `cache_control.ttl` values; a breakpoint without one is "5m".
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}

# Longest match first: "claude-sonnet-4-6" before "claude-sonnet-4".
_ANTHROPIC_MINIMUMS: tuple[tuple[str, int], ...] = (
    ("claude-opus-4-6", 4096),
    ("claude-opus-4-5", 4096),
    ("claude-haiku-4-5", 4096),
    ("claude-sonnet-4-6", 2048),
    ("claude-3-5-haiku", 2048),
    ("claude-3-haiku", 2048),
    ("claude-haiku-3", 2048),
)
_DEFAULT_MINIMUM = 1024


def min_cacheable_tokens(provider: str, model: str | None) -> int:
    """The fewest prefix tokens the provider caches for `model`."""
    if provider != "anthropic":
        return OPENAI_MIN_TOKENS
    name = (model or "").lower()
    for prefix, minimum in _ANTHROPIC_MINIMUMS:
        if name.startswith(prefix):
            return minimum
    return _DEFAULT_MINIMUM
