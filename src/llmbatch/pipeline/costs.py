"""A run's prices and money budget, from its config.

pricer = pricer_of(config, warn)           # genai-prices, or the config's fixed prices
budget = budget_of(config, pricer, spent)  # None without `max_cost`
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ..budget import Budget
from ..pricing import FixedPrices, GenaiPrices, Pricer, PriceSource, vendor_at
from ..types import BatchRequest, Usage
from .config import RunConfig
from .errors import ConfigError

__all__ = ["budget_of", "pricer_of", "until_budget_spent"]

# `--provider` names the API flavour; genai-prices names the vendor. An OpenAI-compatible
# server with a model the data does not know is simply unpriced.
_PRICE_PROVIDER = {"openai": "openai", "anthropic": "anthropic", "gemini": "google"}


def pricer_of(config: RunConfig, warn: Callable[[str], None]) -> Pricer:
    """The run's prices: the config's fixed prices, or genai-prices' data."""
    price_in, price_out = config.price_in, config.price_out
    if (price_in is None) != (price_out is None):
        raise ConfigError("price_in", "`price_in` and `price_out` go together (USD per 1M tokens)")
    if config.price_cached_in is not None and price_in is None:
        raise ConfigError("price_cached_in", "`price_cached_in` needs `price_in` and `price_out`")
    source: PriceSource
    if price_in is not None and price_out is not None:
        source = FixedPrices(price_in, price_out, config.price_cached_in)
    else:
        source = GenaiPrices(base_url=config.base_url)
    return Pricer(
        source,
        provider=_PRICE_PROVIDER.get(config.provider),
        model=config.model,
        notice=warn,
        vendor=vendor_at(config.base_url),  # Groq prices its flex tier its own way
    )


def budget_of(config: RunConfig, pricer: Pricer, spent: float) -> Budget | None:
    """The run's budget for `max_cost`, counting what the output already holds as spent."""
    if config.max_cost is None:
        return None
    if (
        config.model
        and pricer.source.price(config.model, pricer.provider, Usage(1, 1), False) is None
    ):
        raise ConfigError(
            "max_cost",
            f"`max_cost`: no price is known for model {config.model!r}; "
            "give `price_in` and `price_out` (USD per 1M tokens)",
        )
    return Budget(config.max_cost, pricer, spent=spent)


def until_budget_spent(
    requests: Iterator[BatchRequest], stopped: Callable[[], bool]
) -> Iterator[BatchRequest]:
    """`requests` until the budget stopped admitting: the rest are not even pulled (they
    stay unfinished, for the rerun), so a stopped run ends as soon as its last call does."""
    for request in requests:
        if stopped():
            return
        yield request
