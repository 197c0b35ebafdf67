"""The shared prefixes of an input, counted in bounded memory during the precheck.

    census = PrefixCensus(model="gpt-4o-mini")
    for request in requests:
        census.add(request)
    census.shared(prefix)          # True: at least two requests start with it
    census.groups()                # [(prefix, count), ...], most requests first

Counting every distinct prefix exactly would take a dict entry per line when prefixes are
unique (10M lines: about a gigabyte). The census is the Misra-Gries summary instead: at most
`capacity` counters; when a new prefix finds them full, every counter drops by one and those
at zero go. A prefix shared by more than lines / capacity requests is always kept, and a
kept count never exceeds the true one, so `shared()` never says "shared" of a prefix seen
once (no breakpoint is ever paid for a prefix nobody reads). With the default 65,536
counters the summary stays under ~10 MB whatever the input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..types import CompletionRequest
from .prefix import Prefix, prefix_of

__all__ = ["DEFAULT_CAPACITY", "PrefixCensus"]

DEFAULT_CAPACITY = 65_536


@dataclass(slots=True)
class PrefixCensus:
    """Shared prefixes of the requests `add`ed (see the module docstring)."""

    model: str | None = None
    capacity: int = DEFAULT_CAPACITY
    requests: int = 0  # chat requests seen
    with_prefix: int = 0  # of them, with a prefix
    _counts: dict[int, int] = field(default_factory=dict)
    _prefixes: dict[int, Prefix] = field(default_factory=dict)
    dropped: int = 0  # decrement rounds: a kept count is at most this much under the truth

    def add(self, request: CompletionRequest) -> Prefix | None:
        """Count `request`'s prefix; returns it."""
        self.requests += 1
        prefix = prefix_of(request, self.model)
        if prefix is None:
            return None
        self.with_prefix += 1
        key = prefix.key
        counts = self._counts
        if key in counts:
            counts[key] += 1
        elif len(counts) < self.capacity:
            counts[key] = 1
            self._prefixes[key] = prefix
        else:
            self._decrement()
        return prefix

    def observe(self, request: CompletionRequest) -> None:
        """`add`, as a precheck observer."""
        self.add(request)

    def _decrement(self) -> None:
        # Every counter, and the newcomer's implicit one, drops by one (Misra-Gries).
        self.dropped += 1
        counts = self._counts
        gone = [k for k, c in counts.items() if c <= 1]
        for k in gone:
            del counts[k]
            del self._prefixes[k]
        for k in counts:
            counts[k] -= 1

    def count(self, key: int) -> int:
        """A lower bound of the requests with this prefix (0: not kept)."""
        return self._counts.get(key, 0)

    def shared(self, prefix: Prefix) -> bool:
        """True when at least two requests are known to start with `prefix`."""
        return self._counts.get(prefix.key, 0) >= 2

    def groups(self) -> list[tuple[Prefix, int]]:
        """The shared prefixes and their (lower-bound) counts, most requests first."""
        found = [(self._prefixes[k], c) for k, c in self._counts.items() if c >= 2]
        found.sort(key=lambda pc: -pc[1])
        return found
