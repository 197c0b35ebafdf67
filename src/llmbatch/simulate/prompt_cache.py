"""The providers' prompt caches, as the simulator plays them, reported in each API's usage.

    cache = PromptCaches(config, rng)
    problem = cache.invalid(dialect, body)        # a 400's message, or None
    cache.arrive(kind, dialect, body)             # looked up when the request is admitted
    cache.settle(kind, dialect, body, payload)    # usage filled in, entries written, at answer

A cache entry is readable only once the request that wrote it has been answered (as the
providers document): 64 concurrent first requests of a new prefix all miss and all write.

**OpenAI** (automatic, chat routes): prompts of 1,024 tokens and more are cached in 128-token
steps. A request is routed to one of `cache_machines` machines by a hash of its first 256
tokens plus its `prompt_cache_key`; once more than `cache_spill_rpm` requests of one route
arrived in the last minute, the overflow goes to a random machine. Each machine holds
`cache_machine_tokens` tokens of entries, least recently used first out; an entry lives
`cache_ttl` seconds after its last use (`prompt_cache_retention: "24h"`: a day). Reported as
`usage.prompt_tokens_details.cached_tokens` (`prompt_tokens` counts them too).

**Anthropic** (`/v1/messages`): only what a `cache_control` breakpoint marks is cached: the
prefix (tools, system, messages, in that order) up to and including the marked block, when
it holds at least the model's minimum (`llmbatch.prompt_cache.limits`). A request reads the
longest cached prefix ending at a breakpoint or at one of the 20 blocks before one, and
writes every breakpoint past that. More than 4 breakpoints, an unknown `ttl`, or a "1h"
breakpoint after a "5m" one are refused with a 400, as the API does. Entries live 5 minutes
(or 1 hour with `"ttl": "1h"`) after their last use. Reported as `input_tokens` (after the
last breakpoint), `cache_read_input_tokens`, `cache_creation_input_tokens` and
`cache_creation.ephemeral_5m_input_tokens` / `ephemeral_1h_input_tokens`.

Tokens are the simulator's (one per four characters of the request's text, `dialects.prompt`);
tools are part of the cached prefix but, as in the simulator's `prompt_tokens`, count none.
"""

from __future__ import annotations

import collections
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..prompt_cache.limits import (
    ANTHROPIC_MAX_BREAKPOINTS,
    OPENAI_MIN_TOKENS,
    OPENAI_STEP_TOKENS,
    TTL_SECONDS,
    min_cacheable_tokens,
)
from ..text import chars_to_tokens
from .dialects import ANTHROPIC, Dialect

__all__ = ["PromptCaches"]

ROUTE_CHARS = 256 * 4  # OpenAI routes by the first ~256 tokens
LOOKBACK_BLOCKS = 20  # Anthropic checks this many block boundaries before a breakpoint
RETENTION_24H = 86400.0
# Tickets of requests that never reach their answer (a fault after admission) are dropped
# after this long, so the table stays bounded.
_TICKET_SECONDS = 900.0

Body = dict[str, Any]


@dataclass(slots=True)
class _Ticket:
    """What one request found at admission, applied when it is answered."""

    at: float
    read: int = 0
    write: int = 0
    write_1h: int = 0
    total: int | None = None  # tokens the cache saw (None: the reply's prompt_tokens)
    store: Callable[[], None] | None = None  # the writes, done at answer


@dataclass(slots=True)
class _Machine:
    """One OpenAI cache machine: entries by prefix hash, least recently used first."""

    capacity: int
    entries: collections.OrderedDict[bytes, tuple[int, float]] = field(
        default_factory=collections.OrderedDict
    )
    tokens: int = 0

    def get(self, key: bytes, now: float, ttl: float) -> bool:
        entry = self.entries.get(key)
        if entry is None:
            return False
        size, expires = entry
        if expires <= now:
            del self.entries[key]
            self.tokens -= size
            return False
        self.entries[key] = (size, now + ttl)
        self.entries.move_to_end(key)
        return True

    def put(self, key: bytes, size: int, now: float, ttl: float) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.tokens -= old[0]
        self.entries[key] = (size, now + ttl)
        self.tokens += size
        while self.tokens > self.capacity and self.entries:
            _, (gone, _) = self.entries.popitem(last=False)
            self.tokens -= gone


class PromptCaches:
    """Both providers' caches for one simulator; counters in `counts()`."""

    def __init__(
        self,
        *,
        machines: int = 8,
        machine_tokens: int = 1_000_000,
        spill_rpm: float = 15.0,
        ttl: float = 300.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.machines = [_Machine(machine_tokens) for _ in range(max(1, machines))]
        self.spill_rpm = spill_rpm
        self.ttl = ttl
        self.rng = rng or random.Random(0)
        self.clock = clock
        self._routes: dict[bytes, collections.deque[float]] = {}
        self._anthropic: dict[bytes, float] = {}  # prefix hash -> expiry
        self._anthropic_ttl: dict[bytes, float] = {}
        self._tickets: dict[int, tuple[Body, _Ticket]] = {}
        self.reset_counts()

    def reset_counts(self) -> None:
        self.read_tokens = 0
        self.write_tokens = 0
        self.hits = 0
        self.writes = 0
        self.spilled = 0

    def counts(self) -> dict[str, int]:
        return {
            "cache_read_tokens": self.read_tokens,
            "cache_write_tokens": self.write_tokens,
            "cache_hits": self.hits,
            "cache_writes": self.writes,
            "cache_spilled": self.spilled,
        }

    # -- the request's way through ------------------------------------------------------------

    def invalid(self, dialect: Dialect, body: Body) -> str | None:
        """Why the API refuses the body's cache settings (a 400), or None."""
        if dialect is not ANTHROPIC:
            return None
        marks = [b.ttl for b in _blocks(body) if b.ttl is not None]
        if len(marks) > ANTHROPIC_MAX_BREAKPOINTS:
            return (
                f"A maximum of {ANTHROPIC_MAX_BREAKPOINTS} blocks with cache_control may be "
                f"provided. Found {len(marks)}."
            )
        for ttl in marks:
            if ttl not in TTL_SECONDS:
                return f"cache_control.ttl: Input should be '5m' or '1h', got {ttl!r}"
        if "1h" in marks and "5m" in marks[: len(marks) - marks[::-1].index("1h")]:
            return (
                "cache_control: a ttl='1h' cache entry must come before any ttl='5m' one "
                "(longer TTLs first)"
            )
        return None

    def arrive(self, kind: str, dialect: Dialect, body: Body) -> None:
        """Look the request up as it is admitted; its writes wait for its answer."""
        ticket = self._lookup(kind, dialect, body)
        if ticket is None:
            return
        self._prune(ticket.at)
        self._tickets[id(body)] = (body, ticket)

    def settle(self, kind: str, dialect: Dialect, body: Body, payload: Body) -> None:
        """Put the cache's figures in the reply's usage and write its entries (a batch line,
        never admitted, is looked up here)."""
        held = self._tickets.pop(id(body), None)
        ticket = held[1] if held is not None else self._lookup(kind, dialect, body)
        usage = payload.get("usage")
        if ticket is None or not isinstance(usage, dict):
            return
        if ticket.store is not None:
            ticket.store()
        # The cache reads the text a little differently from `prompt_tokens` (roles marked,
        # block separators): never report more than the reply's input.
        responses = kind == "responses"
        read_as = "input_tokens" if dialect is ANTHROPIC or responses else "prompt_tokens"
        total = int(usage.get(read_as) or 0)
        ticket.read = min(ticket.read, total)
        ticket.write = min(ticket.write, total - ticket.read)
        ticket.write_1h = min(ticket.write_1h, ticket.write)
        if ticket.read:
            self.hits += 1
            self.read_tokens += ticket.read
        if ticket.write:
            self.writes += 1
            self.write_tokens += ticket.write
        if dialect is ANTHROPIC:
            usage["input_tokens"] = max(0, total - ticket.read - ticket.write)
            usage["cache_creation_input_tokens"] = ticket.write
            usage["cache_read_input_tokens"] = ticket.read
            usage["cache_creation"] = {
                "ephemeral_5m_input_tokens": ticket.write - ticket.write_1h,
                "ephemeral_1h_input_tokens": ticket.write_1h,
            }
        elif responses:
            usage["input_tokens_details"] = {"cached_tokens": ticket.read, "cache_write_tokens": 0}
        else:
            usage["prompt_tokens_details"] = {"cached_tokens": ticket.read, "audio_tokens": 0}
            usage["completion_tokens_details"] = {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            }

    def _prune(self, now: float) -> None:
        if len(self._tickets) < 4096:
            return
        stale = [k for k, (_, t) in self._tickets.items() if now - t.at > _TICKET_SECONDS]
        for key in stale:
            del self._tickets[key]

    def _lookup(self, kind: str, dialect: Dialect, body: Body) -> _Ticket | None:
        if dialect is ANTHROPIC:
            return self._anthropic_lookup(body) if kind == "messages" else None
        return self._openai_lookup(body) if kind in ("chat", "responses") else None

    # -- OpenAI -------------------------------------------------------------------------------

    def _openai_lookup(self, body: Body) -> _Ticket:
        now = self.clock()
        text = _openai_text(body)
        tokens = chars_to_tokens(len(text))
        ticket = _Ticket(now)
        if tokens < OPENAI_MIN_TOKENS:
            return ticket
        model = str(body.get("model") or "")
        key = body.get("prompt_cache_key")
        ttl = RETENTION_24H if body.get("prompt_cache_retention") == "24h" else self.ttl
        route = _digest(model, text[:ROUTE_CHARS], "" if key is None else str(key))
        machine = self.machines[int.from_bytes(route[:4], "big") % len(self.machines)]
        if self._over_rate(route, now):
            self.spilled += 1
            machine = self.rng.choice(self.machines)
        # One entry per 128-token step from 1,024 up, each extending the one before: the hit
        # is the longest unbroken run of them (an evicted step cuts off what follows it).
        steps = list(range(OPENAI_MIN_TOKENS, tokens + 1, OPENAI_STEP_TOKENS))
        keys = _step_keys(model, text, steps)
        hit = 0
        for n, k in zip(steps, keys, strict=True):
            if not machine.get(k, now, ttl):
                break
            hit = n
        ticket.read = hit
        if hit < steps[-1]:
            ticket.write = steps[-1] - hit  # not billed apart by OpenAI; counted here

            def store() -> None:
                at = self.clock()
                for i, k in enumerate(keys):
                    machine.put(k, OPENAI_MIN_TOKENS if i == 0 else OPENAI_STEP_TOKENS, at, ttl)

            ticket.store = store
        return ticket

    def _over_rate(self, route: bytes, now: float) -> bool:
        seen = self._routes.setdefault(route, collections.deque())
        while seen and now - seen[0] > 60.0:
            seen.popleft()
        seen.append(now)
        while len(seen) > self.spill_rpm + 1:
            seen.popleft()
        if len(self._routes) > 100_000:  # bounded: forget routes idle for a minute
            for k in [k for k, q in self._routes.items() if not q or now - q[-1] > 60.0]:
                del self._routes[k]
        return len(seen) > self.spill_rpm

    # -- Anthropic ----------------------------------------------------------------------------

    def _anthropic_lookup(self, body: Body) -> _Ticket:
        now = self.clock()
        blocks = _blocks(body)
        ticket = _Ticket(now)
        marks = [i for i, b in enumerate(blocks) if b.ttl is not None]
        if not marks:
            return ticket
        model = str(body.get("model") or "")
        minimum = min_cacheable_tokens("anthropic", model)
        keys, ends = _chain(model, blocks)
        hit_at, hit_tokens = -1, 0
        for mark in marks:
            for j in range(mark, max(-1, mark - LOOKBACK_BLOCKS - 1), -1):
                if j <= hit_at:
                    break
                if self._anthropic_get(keys[j], now):
                    hit_at, hit_tokens = j, ends[j]
                    break
        ticket.read = hit_tokens
        # Every breakpoint past the hit whose prefix is long enough is written.
        writes = [m for m in marks if m > hit_at and ends[m] >= minimum]
        if writes:
            last = writes[-1]
            ticket.write = ends[last] - hit_tokens
            start = hit_tokens
            for m in writes:
                if blocks[m].ttl == "1h":
                    ticket.write_1h += ends[m] - start
                start = ends[m]
            ticket.write_1h = min(ticket.write_1h, ticket.write)

            def store() -> None:
                at = self.clock()
                for m in writes:
                    ttl = TTL_SECONDS[blocks[m].ttl or "5m"]
                    self._anthropic[keys[m]] = at + ttl
                    self._anthropic_ttl[keys[m]] = ttl
                if len(self._anthropic) > 200_000:
                    for k in [k for k, exp in self._anthropic.items() if exp <= at]:
                        del self._anthropic[k]
                        self._anthropic_ttl.pop(k, None)

            ticket.store = store
        return ticket

    def _anthropic_get(self, key: bytes, now: float) -> bool:
        expires = self._anthropic.get(key)
        if expires is None or expires <= now:
            return False
        self._anthropic[key] = now + self._anthropic_ttl.get(key, TTL_SECONDS["5m"])
        return True


@dataclass(slots=True)
class _Block:
    text: str  # counted as tokens
    ident: bytes  # what identifies it in the cache key
    ttl: str | None  # its breakpoint's TTL ("5m" when unset), None without one


def _blocks(body: Body) -> list[_Block]:
    """Anthropic's cache order: tools, system, then each message's content blocks."""
    out: list[_Block] = []
    for tool in body.get("tools") or ():
        if isinstance(tool, dict):
            out.append(_block("", tool))
    system = body.get("system")
    if isinstance(system, str):
        out.append(_Block(system, b"s" + system.encode(), None))
    elif isinstance(system, list):
        out.extend(_block(_text(b), b) for b in system if isinstance(b, dict))
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        role = str(message.get("role"))
        content = message.get("content")
        if isinstance(content, str):
            out.append(_Block(content, role.encode() + b":" + content.encode(), None))
        elif isinstance(content, list):
            out.extend(_block(_text(b), b, role) for b in content if isinstance(b, dict))
    return out


def _block(text: str, raw: dict[str, Any], role: str = "") -> _Block:
    control = raw.get("cache_control")
    ttl = None
    if isinstance(control, dict):
        ttl = str(control.get("ttl") or "5m")
    ident = {k: v for k, v in raw.items() if k != "cache_control"}
    return _Block(
        text, role.encode() + b":" + orjson.dumps(ident, option=orjson.OPT_SORT_KEYS), ttl
    )


def _text(block: dict[str, Any]) -> str:
    text = block.get("text")
    return text if isinstance(text, str) else ""


def _chain(model: str, blocks: list[_Block]) -> tuple[list[bytes], list[int]]:
    """The cache key of each prefix (blocks[:i+1]) and the tokens it holds."""
    h = hashlib.blake2b(model.encode(), digest_size=16)
    keys: list[bytes] = []
    ends: list[int] = []
    chars = 0
    for i, block in enumerate(blocks):
        h.update(len(block.ident).to_bytes(8, "big"))
        h.update(block.ident)
        keys.append(h.copy().digest())
        if block.text:
            chars += len(block.text) + (1 if i else 0)  # the newline `prompt` joins with
        ends.append(chars_to_tokens(chars))
    return keys, ends


def _openai_text(body: Body) -> str:
    """The prompt's text in order, as the cache reads it (roles marked, so a system and a
    user message with one text differ). A Responses body's `instructions` come first, as a
    system message's, and its `input` (a string: one user message) as its messages."""
    parts: list[str] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        parts.append(f"system\x1f{instructions}")
    messages = body.get("messages") or body.get("input") or ()
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(_text(p) for p in content if isinstance(p, dict))
        parts.append(f"{message.get('role')}\x1f{content if isinstance(content, str) else ''}")
    return "\x1e".join(parts)


def _step_keys(model: str, text: str, steps: list[int]) -> list[bytes]:
    h = hashlib.blake2b(model.encode(), digest_size=16)
    keys: list[bytes] = []
    done = 0
    for n in steps:
        h.update(text[done : n * 4].encode())
        done = n * 4
        keys.append(h.copy().digest())
    return keys


def _digest(*parts: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode())
        h.update(b"\x00")
    return h.digest()
