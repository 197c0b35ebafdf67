"""A hard cap on money: an `Admission` that never lets a run's spend pass `max_cost`.

    budget = Budget(5.00, Pricer(provider="openai", model="gpt-4o-mini"), spent=1.25)
    engine = Engine(client, EngineConfig(budget=budget))     # or BatchProcessorConfig(budget=)
    ...
    budget.exhausted      # the reason admission stopped, or None
    budget.spent          # USD settled so far (actual usage of finished attempts)

Each attempt reserves its worst case (`Pricer.worst_case`: an upper bound of its input tokens
plus `max_tokens`) before it is sent, and settles its actual cost when it ends, releasing the
rest. An attempt is admitted only while `spent + reserved + its worst case <= max_cost`; when
it does not fit, it waits for attempts in flight to settle, and when it still does not fit
with nothing in flight, the budget is exhausted: this and every later attempt is refused with
`BudgetExceededError` (a `BatchCancelledError`: the request is left unfinished, with no output
line, so a rerun with a higher cap picks it up). In-flight attempts always finish.

What an attempt costs when it fails: nothing when the server refused it (an error status),
its worst case when its outcome is unknown (our timeout, a reply that was paid for but failed
validation): the cap stays a hard one. `admit_amount` / `settle_amount` are the same check for
callers that pay in bulk (a provider batch API job: its worst case, reserved at submission).
"""

from __future__ import annotations

import asyncio
import math

from .admission import PermitBase
from .errors import BatchCancelledError, may_be_billed
from .pricing import Pricer
from .types import CompletionRequest, CompletionResponse

__all__ = ["Budget", "BudgetExceededError", "BudgetPermit", "attempt_cost"]


class BudgetExceededError(BatchCancelledError):
    """Not sent: the run's budget (`--max-cost`) could not cover this request's worst case.

    A `BatchCancelledError`, so the request is unfinished (no output line), not failed."""


class BudgetPermit(PermitBase):
    """One attempt's reservation; settled with its actual cost when released."""

    __slots__ = ("budget", "request", "reserved")

    def __init__(self, budget: Budget, request: CompletionRequest) -> None:
        super().__init__()
        self.budget = budget
        self.request = request
        self.reserved = 0.0

    async def _acquire(self) -> None:
        self.reserved = await self.budget._reserve(self.request)

    def _release(self, response: CompletionResponse | None, error: BaseException | None) -> None:
        self.budget._settle_attempt(self, response, error)


class Budget:
    """A cap of `max_cost` USD over everything admitted through it (see the module doc).

    `spent`: USD already spent before this run (a resumed run's output, re-read). Use from one
    event loop. For a cluster, `llmbatch.ray.ClusterLimiter(max_cost=...)` holds one budget
    for every worker.
    """

    def __init__(self, max_cost: float, pricer: Pricer | None = None, *, spent: float = 0.0):
        if not (max_cost >= 0 and math.isfinite(max_cost)):
            raise ValueError(f"max_cost must be a number >= 0, got {max_cost!r}")
        self.max_cost = float(max_cost)
        self.pricer = pricer if pricer is not None else Pricer()
        self.spent = float(spent)
        self.reserved = 0.0
        self.in_flight = 0
        self.refused = 0
        self.exhausted: str | None = None
        self._changed: asyncio.Event | None = None

    @property
    def remaining(self) -> float:
        """USD not yet spent nor reserved."""
        return max(0.0, self.max_cost - self.spent - self.reserved)

    def admit(self, request: CompletionRequest) -> BudgetPermit:
        return BudgetPermit(self, request)

    # -- bulk callers (a provider batch API) --------------------------------------------------

    def admit_amount(self, worst_case: float | None) -> bool:
        """Reserve `worst_case` USD if it fits under the cap now; False exhausts the budget.

        None (no price known) never fits. Settle with `settle_amount` when the cost is known.
        """
        return bool(self.try_reserve(worst_case, wait=False))

    def try_reserve(self, worst_case: float | None, *, wait: bool = True) -> bool | None:
        """Reserve `worst_case` USD: True if reserved; None if it does not fit yet but may once
        what is in flight settles (only with `wait`); False if refused: the budget is then
        exhausted, for this and every later request."""
        if self.exhausted is None and worst_case is not None:
            if self._fits(worst_case):
                self.reserved += worst_case
                self.in_flight += 1
                return True
            if wait and self.in_flight > 0:
                return None
        self._exhaust(worst_case)
        self.refused += 1
        return False

    def fits(self, amount: float | None) -> bool:
        """True if `amount` USD could be reserved now (nothing is reserved)."""
        return self.exhausted is None and amount is not None and self._fits(amount)

    def hold(self, amount: float) -> None:
        """Reserve `amount` USD whether or not it fits: money already committed elsewhere (a
        provider batch an earlier run created, re-attached). Settle with `settle_amount`."""
        self.reserved += amount
        self.in_flight += 1

    def settle_amount(self, reserved: float, actual: float) -> None:
        """Release a reservation made by `admit_amount`, spending `actual` USD instead."""
        self.in_flight = max(0, self.in_flight - 1)
        # Nothing in flight holds nothing: no float residue of the sums is left behind.
        self.reserved = max(0.0, self.reserved - reserved) if self.in_flight else 0.0
        self.spent += actual
        if self._changed is not None:
            self._changed.set()

    # -- the admission ------------------------------------------------------------------------

    def _fits(self, amount: float) -> bool:
        # A tolerance for float sums: a run capped at exactly its worst cases still runs.
        return self.spent + self.reserved + amount <= self.max_cost * (1 + 1e-12) + 1e-12

    def _exhaust(self, worst_case: float | None) -> None:
        if self.exhausted is not None:
            return
        if worst_case is None:
            self.exhausted = "a request's model has no known price, so its cost cannot be capped"
        else:
            # What is left is what neither spending nor a reservation holds: a provider batch
            # in flight holds its worst case, so leaving it out made the message contradict
            # itself ("up to $0.000009, more than the $0.002000 left").
            worst, left = _usd_pair(worst_case, self.remaining)
            self.exhausted = f"the next request could cost up to {worst}, more than the {left} left"
            if self.in_flight and self.reserved > 0:
                held = _usd_pair(self.reserved, 0.0)[0]
                self.exhausted += f" ({held} is held by requests in flight)"
        if self._changed is not None:
            self._changed.set()

    async def _reserve(self, request: CompletionRequest) -> float:
        worst = self.pricer.worst_case(request)
        while (fits := self.try_reserve(worst)) is None:
            # What is in flight may cost less than it reserved: wait for it to settle.
            if self._changed is None:
                self._changed = asyncio.Event()
            self._changed.clear()
            await self._changed.wait()
        if not fits or worst is None:
            raise BudgetExceededError(
                f"not sent under `max_cost` ${self.max_cost:g}: {self.exhausted}"
            )
        return worst

    def _settle_attempt(
        self,
        permit: BudgetPermit,
        response: CompletionResponse | None,
        error: BaseException | None,
    ) -> None:
        actual = attempt_cost(self.pricer, permit.reserved, permit.request, response, error)
        self.settle_amount(permit.reserved, actual)


def _usd_pair(a: float, b: float) -> tuple[str, str]:
    """Both amounts as dollars, with the fewest decimals (at least 6) that tell them apart."""
    for digits in range(6, 13):
        shown = f"${a:.{digits}f}", f"${b:.{digits}f}"
        if shown[0] != shown[1]:
            break
    return shown


def attempt_cost(
    pricer: Pricer,
    reserved: float,
    request: CompletionRequest,
    response: CompletionResponse | None,
    error: BaseException | None,
) -> float:
    """What one ended attempt is counted as spending (see the module doc)."""
    if response is not None:
        actual = pricer.cost(response, request.model)
        return reserved if actual is None else actual
    if may_be_billed(error):
        return reserved  # count the worst
    return 0.0
