"""The simulator's rate limits: continuous token buckets, one per limited quantity.

    limits = Limits.from_config(SimulatorConfig(rpm=1200, otpm=8000), time.monotonic)
    wait = limits.admit(Charge(input_tokens=12, output_tokens=16))   # 0.0: admitted
    limits.settle_output(charged=16, used=9)                          # give back 7

Each bucket holds one second's worth of its per-minute limit, as providers police them
("60,000 rpm" is enforced as 1,000 per second, not 60,000 at once). A request is admitted
only if every bucket can take its share, and then all are charged, so a refusal costs
nothing. A request larger than one second's worth is admitted once the bucket is full and
leaves it in debt: otherwise a big `max_tokens` would be refused forever, which no real
provider does, and the debt keeps the long-run rate exact.

A key shared with another client (`phantom_share`, `phantom_every`): a phantom client takes
that share of every budget, in one burst every `phantom_every` seconds from the first request
(as much as the buckets hold then: it is refused too when they are empty). Its requests are
not answered nor counted; a client pacing to the full limit meets refusals it did not cause.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .config import SimulatorConfig

__all__ = ["BucketState", "Charge", "Limits"]


@dataclass(frozen=True, slots=True)
class Charge:
    """What one request costs: tokens are the prompt's (input) and `max_tokens` (output)."""

    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class BucketState:
    """One limit as headers report it: `name` is requests, tokens, input-tokens or output-tokens."""

    name: str
    limit: int
    remaining: int
    reset_seconds: float  # until the bucket is full again


class _Bucket:
    def __init__(self, name: str, per_minute: int, clock: Callable[[], float]) -> None:
        self.name = name
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.clock = clock
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` may be taken (0 if it may now)."""
        self._refill()
        return max(0.0, (min(amount, self.capacity) - self.level) / self.rate)

    def take(self, amount: float) -> None:
        self.level -= amount

    def drain(self, amount: float) -> None:
        """Another client took up to `amount` (what the bucket holds)."""
        self._refill()
        self.level -= max(0.0, min(amount, self.level))

    def give_back(self, amount: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + amount)

    def state(self) -> BucketState:
        self._refill()
        reset = (self.capacity - self.level) / self.rate
        return BucketState(self.name, self.limit, max(0, int(self.level)), reset)


class Limits:
    """All configured buckets; `admit` charges every one of them or none."""

    def __init__(
        self,
        buckets: list[tuple[_Bucket, Callable[[Charge], int]]],
        phantom_share: float = 0.0,
        phantom_every: float = 5.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._buckets = buckets
        self._output = next((b for b, _ in buckets if b.name == "output-tokens"), None)
        self._phantom_share = phantom_share
        self._phantom_every = phantom_every
        self._clock = clock
        self._phantom_next: float | None = None  # the phantom's next burst (from the first request)

    @classmethod
    def from_config(cls, config: SimulatorConfig, clock: Callable[[], float]) -> Limits:
        specs: list[tuple[str, int | None, Callable[[Charge], int]]] = [
            ("requests", config.rpm, lambda c: 1),
            ("tokens", config.tpm, lambda c: c.input_tokens + c.output_tokens),
            ("input-tokens", config.itpm, lambda c: c.input_tokens),
            ("output-tokens", config.otpm, lambda c: c.output_tokens),
        ]
        buckets = [(_Bucket(n, pm, clock), cost) for n, pm, cost in specs if pm is not None]
        return cls(buckets, config.phantom_share, config.phantom_every, clock)

    def __bool__(self) -> bool:
        return bool(self._buckets)

    def admit(self, charge: Charge) -> float:
        """Charge every bucket and return 0, or charge none and return seconds to wait."""
        if self._phantom_share:
            self._phantom()
        costs = [(bucket, cost(charge)) for bucket, cost in self._buckets]
        wait = max((bucket.wait_for(amount) for bucket, amount in costs), default=0.0)
        if wait > 0:
            return wait
        for bucket, amount in costs:
            bucket.take(amount)
        return 0.0

    def _phantom(self) -> None:
        """The other client's bursts due by now, each its share of `phantom_every` seconds."""
        assert self._clock is not None
        now = self._clock()
        if self._phantom_next is None:
            self._phantom_next = now + self._phantom_every
        while self._phantom_next <= now:
            for bucket, _ in self._buckets:
                bucket.drain(self._phantom_share * bucket.rate * self._phantom_every)
            self._phantom_next += self._phantom_every

    def settle_output(self, charged: int, used: int) -> None:
        """Give back the output tokens charged from `max_tokens` but not generated."""
        if self._output is not None and charged > used:
            self._output.give_back(charged - used)

    def states(self) -> list[BucketState]:
        return [bucket.state() for bucket, _ in self._buckets]
