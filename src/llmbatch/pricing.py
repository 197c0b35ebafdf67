"""What a request costs: prices from a maintained library, or the user's own, behind one interface.

    pricer = Pricer(GenaiPrices(), provider="openai", model="gpt-4o-mini")
    pricer.cost(response)           # USD for one answer from its reported usage, or None
    pricer.worst_case(request)      # USD the request can cost at most (input bound + output limit)
    Pricer(FixedPrices(0.2, 0.6))   # USD per 1M input / output tokens, for any model

A `PriceSource` answers one question: the price of a usage for a model. `GenaiPrices` reads the
price data shipped inside the `genai-prices` package (never fetched at run time: its
auto-update is not used); `FixedPrices` is what `--price-in` / `--price-out` give. Unknown
models cost None (the result is marked unpriced) and the `Pricer` says so once per model, never
raising: a price is bookkeeping, never a reason to lose a result.

Usage is counted as the clients report it (`llmbatch.types.Usage`): `prompt_tokens` counts
every input token; `cached_tokens` of them were read from the provider's prompt cache and
`cache_write_tokens` written to it. Answers through a provider's batch API (`batch_api`) get
the library's batch price where it has one, else half the realtime price.

Answers whose reply names the service tier that served them (`llmbatch.tiers`) are priced by
it, where the source knows that tier's price (`TierPrices`; genai-prices has per-tier prices
for some models, OpenAI's `service_tier` "flex" and "priority"): a flex answer at the flex
price, else at the price list its vendor sells flex at (`flex_price_list`: the batch price,
but Groq's flex is its on-demand price, only its batch API is discounted); a priority answer
at the priority price, else the standard one.
Which price list priced it is the answer's `price_list` (`Pricer.priced`), recorded on its
line: a priority answer priced as standard says so, rather than looking cheaper than it was.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from .text import flatten_messages
from .tiers import FLEX, PRIORITY, lane_of, served_tier, tier_of
from .types import CompletionRequest, CompletionResponse, Usage

__all__ = [
    "BATCH_DISCOUNT",
    "DEFAULT_WORST_OUTPUT_TOKENS",
    "FixedPrices",
    "GenaiPrices",
    "PriceSource",
    "Pricer",
    "TierPrices",
    "flex_costs_no_more",
    "flex_price_list",
    "worst_input_tokens",
]

log = logging.getLogger("llmbatch")

BATCH_DISCOUNT = 0.5  # batch APIs bill half the realtime price (OpenAI, Anthropic, Gemini)
# A request without an output limit of its own (`CompletionRequest.output_limit`): the budget
# assumes this many.
DEFAULT_WORST_OUTPUT_TOKENS = 4096
# Special tokens a chat format adds around the text (role markers, separators): a bound,
# per request and per message, well above what OpenAI and Anthropic add.
_FRAME_TOKENS = 16
_MESSAGE_TOKENS = 8
_MILLION = 1_000_000

# Where the price data has no flex price: the price list a vendor (genai-prices' provider id)
# sells its flex tier at. Groq bills flex at the on-demand price (its batch API is the one 50%
# off); OpenAI's flex is the batch price, which genai-prices has for most models anyway.
_FLEX_PRICED_AS: dict[str, str] = {"groq": "standard"}


def flex_price_list(vendor: str | None) -> str:
    """The price list ("batch" or "standard") of `vendor`'s flex answers where no flex price is
    known: what its flex tier costs compared with its batch API and its standard tier."""
    return _FLEX_PRICED_AS.get(vendor or "", "batch")


def vendor_at(base_url: str | None) -> str | None:
    """The genai-prices provider id of the API at `base_url` ("groq" for api.groq.com), by the
    library's URL patterns; None for a URL it does not know (a local server)."""
    if not base_url:
        return None
    from genai_prices.data_snapshot import get_snapshot

    try:
        return str(get_snapshot().find_provider(None, None, base_url).id)
    except LookupError:
        return None


@runtime_checkable
class PriceSource(Protocol):
    """Prices usage: USD for `usage` of `model` (at `provider`), or None when unknown.

    `batch`: the answer came through the provider's batch API.
    """

    def price(
        self, model: str, provider: str | None, usage: Usage, batch: bool
    ) -> float | None: ...


@runtime_checkable
class TierPrices(Protocol):
    """A `PriceSource` that also knows some models' prices per service tier: USD for `usage`
    of `model` served by `tier` ("flex", "priority"), or None when it has no such price (the
    `Pricer` then uses the batch price for flex, the standard one for priority)."""

    def tier_price(
        self, model: str, provider: str | None, usage: Usage, tier: str
    ) -> float | None: ...


@dataclass(slots=True, frozen=True)
class FixedPrices:
    """One price for every model: USD per 1M input and output tokens (`--price-in/--price-out`).

    `cached_input`: USD per 1M input tokens read from the prompt cache (default: `input`).
    Cache writes are billed as input. Batch answers cost `BATCH_DISCOUNT` of it.
    """

    input: float
    output: float
    cached_input: float | None = None

    def __post_init__(self) -> None:
        for name in ("input", "output", "cached_input"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} price must be a number >= 0, got {value!r}")

    def price(self, model: str, provider: str | None, usage: Usage, batch: bool) -> float | None:
        cached_price = self.input if self.cached_input is None else self.cached_input
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        usd = (
            (usage.prompt_tokens - cached) * self.input
            + cached * cached_price
            + usage.completion_tokens * self.output
        ) / _MILLION
        return usd * BATCH_DISCOUNT if batch else usd


class GenaiPrices:
    """Prices from the `genai-prices` package's bundled data (no network, no auto-update).

    `base_url`: the API the run talks to; the data knows many providers by their URL (Groq,
    Mistral, Together, ...), so that one is asked first, then `provider` by id. A model the
    data does not know (a self-hosted one) prices as None. Lookups are cached per (model,
    provider, price list); for models with flat per-token prices (almost all), the cost of a
    usage is then a few multiplications, not a call into the library per result.

    `tier_price` (`TierPrices`) reads the data's per-tier prices (its price variants for a
    `service_tier`, as OpenAI's flex and priority); None for a model without one.
    """

    def __init__(self, base_url: str | None = None) -> None:
        import genai_prices  # noqa: F401  (fails here, at construction, if it is missing)

        self.base_url = base_url
        self._rates: dict[tuple[str, str | None, str], _Rates | None] = {}

    def price(self, model: str, provider: str | None, usage: Usage, batch: bool) -> float | None:
        return self._price(model, provider, usage, "batch" if batch else "standard")

    def tier_price(self, model: str, provider: str | None, usage: Usage, tier: str) -> float | None:
        return self._price(model, provider, usage, tier)

    def vendor(self, model: str, provider: str | None) -> str | None:
        """The genai-prices provider id that prices `model` (at `base_url` first, then
        `provider`); None when the data does not know the model."""
        rates = self._rates_of(model, provider, "standard")
        return None if rates is None else rates.vendor

    def _rates_of(self, model: str, provider: str | None, kind: str) -> _Rates | None:
        key = (model, provider, kind)
        if key in self._rates:
            return self._rates[key]
        rates = None
        if self.base_url:
            rates = _lookup(model, _Route(None, self.base_url), kind)
        if rates is None:
            rates = _lookup(model, _Route(provider, None), kind)
        self._rates[key] = rates
        return rates

    def _price(self, model: str, provider: str | None, usage: Usage, kind: str) -> float | None:
        rates = self._rates_of(model, provider, kind)
        if rates is None:
            return None
        if rates.linear is not None:
            return rates.linear.apply(usage)
        context = rates.context
        usd = _calc(model, rates.route, context, usage)
        if hour := _hour_writes(usage):
            # The library knows one write price (5 minutes); a 1-hour write is 2x the input.
            usd += 2 * _calc(model, rates.route, context, Usage(prompt_tokens=hour)) - _calc(
                model, rates.route, context, Usage(prompt_tokens=hour, cache_write_tokens=hour)
            )
        return usd * rates.factor


@dataclass(slots=True, frozen=True)
class _Linear:
    """USD per 1M tokens of each kind, for models whose price does not depend on volume."""

    input: float
    output: float
    cache_read: float
    cache_write: float
    factor: float

    def apply(self, usage: Usage) -> float:
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
        hour = min(_hour_writes(usage), written)
        plain = usage.prompt_tokens - cached - written
        usd = (
            plain * self.input
            + cached * self.cache_read
            + (written - hour) * self.cache_write
            + hour * 2 * self.input  # Anthropic's 1-hour cache: twice the input price
            + usage.completion_tokens * self.output
        ) / _MILLION
        return usd * self.factor


class _Route(NamedTuple):
    """How genai-prices finds the provider: by its id, or by the API's URL."""

    provider: str | None
    api_url: str | None


@dataclass(slots=True, frozen=True)
class _Rates:
    route: _Route  # how the library finds the provider: by id or by URL
    context: dict[str, str] | None  # the library's price variant to apply (batch, a tier)
    factor: float  # applied on top: BATCH_DISCOUNT for batch answers without a batch price
    linear: _Linear | None  # None: tiered prices, computed by the library each time
    vendor: str  # the library's provider id for the model's price


def _hour_writes(usage: Usage) -> int:
    return min(usage.cache_write_1h_tokens, usage.cache_write_tokens)


def _library_usage(usage: Usage) -> Any:
    import genai_prices

    return genai_prices.Usage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        cache_read_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )


def _calc(model: str, route: _Route, context: dict[str, str] | None, usage: Usage) -> float:
    import genai_prices

    if route.api_url is not None:
        result = genai_prices.calc_price(
            _library_usage(usage),
            model_ref=model,
            provider_api_url=route.api_url,
            price_context=context,
        )
    else:
        result = genai_prices.calc_price(
            _library_usage(usage),
            model_ref=model,
            provider_id=route.provider,
            price_context=context,
        )
    return float(result.total_price)


_BATCH = {"processing": "batch"}


def _lookup(model: str, route: _Route, kind: str) -> _Rates | None:
    """The rates of `model` on a price list: "standard", "batch" (the library's batch price,
    else half the standard), or a service tier's (None when the library has none for it)."""
    import genai_prices
    from genai_prices.types import TieredPrices

    probe = _library_usage(Usage(prompt_tokens=_MILLION))
    try:
        if route.api_url is not None:
            found = genai_prices.calc_price(probe, model_ref=model, provider_api_url=route.api_url)
        else:
            found = genai_prices.calc_price(probe, model_ref=model, provider_id=route.provider)
    except LookupError:
        return None
    except Exception:  # malformed data for one model must not stop a run
        log.debug("genai-prices failed on %r", model, exc_info=True)
        return None
    whens = [v.when for v in found.model.price_variants or ()]
    context: dict[str, str] | None = None
    factor = 1.0
    if kind == "batch":
        if _BATCH in whens:
            context = _BATCH
        else:
            factor = BATCH_DISCOUNT
    elif kind != "standard":
        context = {"service_tier": kind}
        if context not in whens:
            return None  # no price for this tier: the caller falls back
    prices = found.model_price.__dict__.values()
    if any(isinstance(p, TieredPrices) for p in prices):
        return _Rates(route, context, factor, None, found.provider.id)

    def per_million(**kinds: int) -> float:
        return _calc(model, route, context, Usage(**kinds))

    linear = _Linear(
        input=per_million(prompt_tokens=_MILLION),
        output=per_million(completion_tokens=_MILLION),
        cache_read=per_million(prompt_tokens=_MILLION, cached_tokens=_MILLION),
        cache_write=per_million(prompt_tokens=_MILLION, cache_write_tokens=_MILLION),
        factor=factor,
    )
    return _Rates(route, context, factor, linear, found.provider.id)


def flex_costs_no_more(pricer: Pricer | None, model: str | None) -> bool:
    """True unless `pricer` prices `model`'s flex answers above its batch answers (Groq's flex
    is its standard price): a deadline run then moves batches to flex only when the deadline
    needs it (unknown prices are taken as equal)."""
    if pricer is None or not model:
        return True
    usage = Usage(prompt_tokens=_MILLION, completion_tokens=_MILLION)
    flex = pricer._price(model, usage, False, FLEX)
    batch = pricer._price(model, usage, True, None)
    if flex is None or batch is None:
        return True
    return flex[0] <= batch[0] * (1 + 1e-9)


def cache_ttls(request: CompletionRequest) -> set[str]:
    """The TTLs of the `cache_control` breakpoints `request` carries (in its messages' blocks,
    or a `system`/`tools` list in `extra`), "5m" where none is given; empty: no breakpoint."""
    found: set[str] = set()

    def scan(blocks: Any) -> None:
        if not isinstance(blocks, list):
            return
        for block in blocks:
            control = block.get("cache_control") if isinstance(block, Mapping) else None
            if isinstance(control, Mapping):
                found.add(str(control.get("ttl") or "5m"))

    for message in request.messages or ():
        scan(message.get("content") if isinstance(message, Mapping) else None)
    extra = request.extra or {}
    scan(extra.get("system"))
    scan(extra.get("tools"))
    return found


def worst_input_tokens(request: CompletionRequest) -> int:
    """Input tokens `request` can be billed at most: the UTF-8 bytes of its text (a byte-level
    BPE token holds at least one byte) plus the chat format's frame, and every element of an
    embeddings `input` list. Images and other non-text parts are not counted."""
    text = flatten_messages(request.messages, system=request.system, prompt=request.prompt)
    messages = len(request.messages or ()) + (1 if request.system else 0) + 1
    tokens = len(text.encode("utf-8", "surrogatepass")) + _FRAME_TOKENS + _MESSAGE_TOKENS * messages
    if request.extra and isinstance(listed := request.extra.get("input"), list):
        tokens += _listed_input_tokens(listed)  # embeddings of several inputs: each is billed
    return tokens


def _listed_input_tokens(inputs: list[Any]) -> int:
    """Input tokens of an embeddings `input` list, at most: a string's UTF-8 bytes, a token id
    one token, and each element's own frame."""
    tokens = 0
    for element in inputs:
        if isinstance(element, str):
            tokens += len(element.encode("utf-8", "surrogatepass")) + _MESSAGE_TOKENS
        elif isinstance(element, list):
            tokens += _listed_input_tokens(element)
        else:  # a token id
            tokens += 1
    return tokens


class Pricer:
    """A `PriceSource` applied to a run: the default model and provider, and a one-line notice
    (once per model) when a model has no price.

    `provider` is the genai-prices provider id ("openai", "anthropic", ...); None lets the
    library guess from the model name. `model` prices answers that name no model. `vendor`:
    the genai-prices provider id of the service really called (`vendor_at(base_url)`), whose
    rule prices flex answers without a flex price of their own (`flex_price_list`); by
    default the one the source priced the model under, else `provider`.
    """

    def __init__(
        self,
        source: PriceSource | None = None,
        *,
        provider: str | None = None,
        model: str | None = None,
        worst_output_tokens: int = DEFAULT_WORST_OUTPUT_TOKENS,
        notice: Callable[[str], None] = log.warning,
        vendor: str | None = None,
    ) -> None:
        self.source: PriceSource = source if source is not None else GenaiPrices()
        self.provider = provider
        self.vendor = vendor
        self.model = model
        self.worst_output_tokens = worst_output_tokens
        self.notice = notice
        self.unknown: set[str] = set()  # models without a price, noticed once each

    def usage_cost(
        self, model: str | None, usage: Usage, batch: bool = False, tier: str | None = None
    ) -> float | None:
        """USD for `usage` of `model` (default: the pricer's), or None when it has no price;
        `tier`: served by that service tier (priced as `priced` says)."""
        name = model or self.model
        if not name:
            self._unknown("", "the answer names no model and no --model was given")
            return None
        found = self._price(name, usage, batch, tier)
        if found is None:
            self._unknown(name, None)
            return None
        return found[0]

    def cost(self, response: CompletionResponse, model: str | None = None) -> float | None:
        """USD of one answer from its usage: the answer's model, else `model`, else the default.

        Answers from a response cache cost nothing (they were paid for when first bought).
        """
        found = self.priced(response, model)
        return None if found is None else found[0]

    def priced(
        self, response: CompletionResponse, model: str | None = None
    ) -> tuple[float, str | None] | None:
        """(USD, price list) of one answer, as `cost`; the price list is said for an answer a
        service tier served (flex: "flex" or "batch"; priority: "priority" or "standard"),
        None for the others (a batch answer is batch-priced, a standard one standard)."""
        if response.cached:
            return 0.0, None
        names = [n for n in dict.fromkeys((response.model, model, self.model)) if n]
        # The tier the reply says served it decides, not the one asked for.
        tier = None if response.batch_api else served_tier(response)
        for name in names:
            found = self._price(name, response.usage, response.batch_api, tier)
            if found is not None:
                return found
        if names:
            self._unknown(names[0], None)
        else:
            self._unknown("", "the answer names no model and no --model was given")
        return None

    def _price(
        self, name: str, usage: Usage, batch: bool, tier: str | None
    ) -> tuple[float, str | None] | None:
        """(USD, price list) of `usage` of model `name`; None when the source has no price."""
        lane = lane_of(batch, tier)
        if lane in (FLEX, PRIORITY):
            if isinstance(self.source, TierPrices):
                usd = self.source.tier_price(name, self.provider, usage, lane)
                if usd is not None:
                    return usd, lane
            # No price of its own: flex is sold at its vendor's flex price list (the batch
            # price, Groq's standard), priority at least at the standard price (the line says
            # which was used).
            price_list = self.flex_price_list(name) if lane == FLEX else "standard"
            usd = self.source.price(name, self.provider, usage, price_list == "batch")
            return None if usd is None else (usd, price_list)
        usd = self.source.price(name, self.provider, usage, batch)
        return None if usd is None else (usd, None)

    def flex_price_list(self, model: str | None = None) -> str:
        """The price list ("batch" or "standard") of `model`'s flex answers where the source
        knows no flex price: its vendor's rule (`flex_price_list`)."""
        vendor = self.vendor
        name = model or self.model
        if vendor is None and name and isinstance(self.source, GenaiPrices):
            vendor = self.source.vendor(name, self.provider)
        return flex_price_list(vendor if vendor is not None else self.provider)

    def cache_saved(self, response: CompletionResponse, model: str | None = None) -> float | None:
        """USD the provider's prompt cache saved on `response`: its price with every input
        token uncached, less its price as billed (negative when a cache write cost more).
        None when the answer used no prompt cache or has no price."""
        usage = response.usage
        if response.cached or not (usage.cached_tokens or usage.cache_write_tokens):
            return None
        actual = self.cost(response, model)
        if actual is None:
            return None
        plain = dataclasses.replace(
            response, usage=Usage(usage.prompt_tokens, usage.completion_tokens)
        )
        uncached = self.cost(plain, model)
        return None if uncached is None else uncached - actual

    def worst_case(self, request: CompletionRequest, batch: bool = False) -> float | None:
        """USD `request` can cost at most: its input bound (`worst_input_tokens`, all billed
        as uncached) plus its output limit (`CompletionRequest.output_limit`, or
        `worst_output_tokens` when it sets none) of output."""
        limit = request.output_limit()
        tokens = worst_input_tokens(request)
        usage = Usage(
            prompt_tokens=tokens,
            completion_tokens=self.worst_output_tokens if limit is None else limit,
        )
        # A request asking for priority may be served (and billed) at the priority price.
        tier = PRIORITY if not batch and tier_of(request) == PRIORITY else None
        worst = self.usage_cost(request.model, usage, batch, tier)
        ttls = cache_ttls(request)
        if worst is None or not ttls:
            return worst
        # Marked for Anthropic's prompt cache: every input token may be a write (1.25x the
        # input price, 2x for the 1-hour cache), which the uncached bound would not cover.
        written = dataclasses.replace(
            usage,
            cache_write_tokens=tokens,
            cache_write_1h_tokens=tokens if "1h" in ttls else 0,
        )
        return max(worst, self.usage_cost(request.model, written, batch, tier) or 0.0)

    def _unknown(self, model: str, why: str | None) -> None:
        if model in self.unknown:
            return
        self.unknown.add(model)
        self.notice(
            why
            or f"no price known for model {model!r}"
            + (f" at {self.provider}" if self.provider else "")
            + ": its cost is not counted (give `price_in`/`price_out` to price it)"
        )
