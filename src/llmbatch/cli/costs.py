"""The cost flags of `llmbatch run` and `llmbatch plan`: prices, and the budget.

add_cost_arguments(parser)               # --max-cost, --price-in/-out/-cached-in
pricer = pricer_of(args, warn)           # genai-prices, or the flags' fixed prices
budget = budget_of(args, pricer, spent)  # None without --max-cost
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator

from ..budget import Budget
from ..pricing import FixedPrices, GenaiPrices, Pricer, PriceSource
from ..types import BatchRequest, Usage
from ._common import non_negative_float
from .usage import UsageError

__all__ = ["add_cost_arguments", "budget_of", "pricer_of", "until_budget_spent"]

# `--provider` names the API flavour; genai-prices names the vendor. An OpenAI-compatible
# server with a model the data does not know is simply unpriced.
_PRICE_PROVIDER = {"openai": "openai", "anthropic": "anthropic"}


def add_cost_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "cost (prices from the bundled genai-prices data unless given here)"
    )
    g.add_argument(
        "--max-cost",
        type=non_negative_float,
        metavar="USD",
        help="hard cap on money: stop sending before the spend could pass it (exit 4); "
        "rerun with a higher cap to go on",
    )
    g.add_argument(
        "--price-in",
        type=non_negative_float,
        metavar="USD",
        help="USD per 1M input tokens, for every model (self-hosted or unknown models)",
    )
    g.add_argument(
        "--price-out", type=non_negative_float, metavar="USD", help="USD per 1M output tokens"
    )
    g.add_argument(
        "--price-cached-in",
        type=non_negative_float,
        metavar="USD",
        help="USD per 1M input tokens read from the prompt cache (default: --price-in)",
    )


def pricer_of(args: argparse.Namespace, warn: Callable[[str], None]) -> Pricer:
    """The run's prices: the flags' fixed prices, or genai-prices' data."""
    fixed = (args.price_in, args.price_out)
    if (fixed[0] is None) != (fixed[1] is None):
        raise UsageError("--price-in and --price-out go together (USD per 1M tokens)")
    if args.price_cached_in is not None and args.price_in is None:
        raise UsageError("--price-cached-in needs --price-in and --price-out")
    source: PriceSource
    if args.price_in is not None:
        source = FixedPrices(args.price_in, args.price_out, args.price_cached_in)
    else:
        source = GenaiPrices(base_url=args.base_url)
    return Pricer(
        source, provider=_PRICE_PROVIDER.get(args.provider), model=args.model, notice=warn
    )


def budget_of(args: argparse.Namespace, pricer: Pricer, spent: float) -> Budget | None:
    """The run's budget for --max-cost, counting what the output already holds as spent."""
    if args.max_cost is None:
        return None
    if args.model and pricer.source.price(args.model, pricer.provider, Usage(1, 1), False) is None:
        raise UsageError(
            f"--max-cost: no price is known for model {args.model!r}; "
            "pass --price-in and --price-out (USD per 1M tokens)"
        )
    return Budget(args.max_cost, pricer, spent=spent)


def until_budget_spent(
    requests: Iterator[BatchRequest], stopped: Callable[[], bool]
) -> Iterator[BatchRequest]:
    """`requests` until the budget stopped admitting: the rest are not even pulled (they
    stay unfinished, for the rerun), so a stopped run ends as soon as its last call does."""
    for request in requests:
        if stopped():
            return
        yield request
