"""One money cap for a whole Ray cluster: the limiter actor holds the `Budget`, workers ask it.

    limiter = ClusterLimiter.create(rpm, max_cost=5.0, spent=1.25, pricer=Pricer(...))
    budget = limiter.budget()             # in a worker: a ClusterBudget (an `Admission`)
    async with budget.admit(request) as permit: ...

Each attempt reserves its worst case at the actor before it is sent and settles its actual
cost when it ends, exactly as a local `llmbatch.budget.Budget`: the actor's budget sees every
worker's attempts, so their sum never passes the cap. Costs are computed in the worker (the
pricer travels with the limiter handle); the actor only adds them up. When the next attempt
does not fit while others are in flight, the worker asks again shortly (they may settle for
less); once the actor refuses, the worker refuses every later attempt without asking.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ..admission import PermitBase
from ..budget import BudgetExceededError, attempt_cost
from ..pricing import Pricer
from ..types import CompletionRequest, CompletionResponse

__all__ = ["ClusterBudget"]

RETRY_SECONDS = 0.05  # between asks while the next attempt waits for others to settle


class _ClusterPermit(PermitBase):
    __slots__ = ("owner", "request", "reserved")

    def __init__(self, owner: ClusterBudget, request: CompletionRequest) -> None:
        super().__init__()
        self.owner = owner
        self.request = request
        self.reserved = 0.0

    async def _acquire(self) -> None:
        self.reserved = await self.owner._reserve(self.request)

    def _release(self, response: CompletionResponse | None, error: BaseException | None) -> None:
        owner = self.owner
        actual = attempt_cost(owner.pricer, self.reserved, self.request, response, error)
        owner.actor.budget_settle.remote(self.reserved, actual)


class ClusterBudget:
    """A worker's `Admission` on the cluster's budget (from `ClusterLimiter.budget()`)."""

    def __init__(
        self,
        actor: Any,
        pricer: Pricer,
        max_cost: float,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.actor = actor
        self.pricer = pricer
        self.max_cost = max_cost
        self._sleep = sleep  # injectable: tests wait for others to settle in virtual time
        self.refused: str | None = None  # why the cluster's budget stopped admitting

    def admit(self, request: CompletionRequest) -> _ClusterPermit:
        return _ClusterPermit(self, request)

    async def _reserve(self, request: CompletionRequest) -> float:
        worst = self.pricer.worst_case(request)
        while self.refused is None:
            fits = await self.actor.budget_reserve.remote(worst)
            if fits is True:
                assert worst is not None
                return worst
            if isinstance(fits, str):
                self.refused = fits
                break
            await self._sleep(RETRY_SECONDS)
        raise BudgetExceededError(f"not sent under `max_cost` ${self.max_cost:g}: {self.refused}")
