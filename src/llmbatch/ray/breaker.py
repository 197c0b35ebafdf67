"""One outage breaker for a whole Ray cluster: an actor decides, workers follow.

    breaker = ClusterBreaker.create(max_outage=300)     # starts the actor (in the driver)
    admission = breaker.local()                          # in a worker: a SharedBreaker
    async with admission.admit(request) as permit: ...   # the contract of `OutageBreaker`
    breaker.outages()                                    # the cluster's outages, for the summary

Each worker with a breaker of its own sent a probe of its own every interval while the
server was down (four workers, four probes), and kept its outages to itself: a Ray run's
summary reported none. Here the actor holds the one `OutageBreaker` (its logic unchanged):
workers report the attempts that tell it something (a failure that looks like an outage, the
first success after one, a probe's outcome) and, while it is open, ask it whether to go,
probe or wait. One waiter per worker asks (every `POLL_SECONDS` at most); the others wait
behind it, so an outage costs the cluster one probe per interval and a few calls a second.
While all is well nothing is asked: a success after a success is not reported.
"""

from __future__ import annotations

import asyncio
import pickle
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import ray

from ..admission import PermitBase, feedback
from ..breaker import DEFAULT_MAX_OUTAGE, Outage, OutageBreaker
from ..errors import BatchCancelledError, ProviderOutageError, TokenLimitError
from ..types import CompletionRequest, CompletionResponse

__all__ = ["ClusterBreaker", "SharedBreaker"]

POLL_SECONDS = 0.25  # a worker's waiters learn the cluster's breaker closed within this
# A probe that has not reported after this long is taken as lost (its worker died, and with
# it the report): another caller may probe. Without it the cluster waited out max_outage.
# Well under a request's timeout: while the breaker is open the server has been refusing or
# resetting connections, and a probe that long without an answer says no more than a failure.
PROBE_TIMEOUT = 30.0


class _BreakerState:
    """The actor: the cluster's `OutageBreaker`, driven by the workers' calls."""

    def __init__(
        self,
        max_outage: float = DEFAULT_MAX_OUTAGE,
        clock: Callable[[], float] = time.monotonic,
        probe_timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self.breaker = OutageBreaker(max_outage=max_outage, clock=clock)
        self._clock = clock
        self.probe_timeout = probe_timeout
        self._probe_sent_at: float | None = None  # the probe out, as the actor gave it

    def admit(self, key: int) -> tuple[float | None, float | None, ProviderOutageError | None]:
        """(seconds to wait, or None to go; the probe's send time if it goes as the probe;
        the breaker's error if it gave up)."""
        sent_at = self._probe_sent_at
        if sent_at is not None and self._clock() - sent_at > self.probe_timeout:
            self._probe_sent_at = None
            self.breaker.probe_lost()
        permit = self.breaker.permit(key)
        try:
            wait = self.breaker.try_admit(permit)
        except ProviderOutageError as exc:
            return None, None, exc
        if permit.probe:
            self._probe_sent_at = permit.sent_at
            return wait, permit.sent_at, None
        return wait, None, None

    def report(
        self, key: int, probe_sent_at: float | None, error: BaseException | None
    ) -> tuple[bool, ProviderOutageError | None]:
        """One attempt's outcome (`error` None: answered); returns (open, gave up with)."""
        permit = self.breaker.permit(key)
        if probe_sent_at is not None and probe_sent_at == self._probe_sent_at:
            # The probe out. One taken as lost meanwhile reports as any attempt: another
            # probe is out now, and this report must not free its turn.
            self._probe_sent_at = None
            permit.probe = True
            permit.sent_at = probe_sent_at
        self.breaker.finish(permit, None, error)
        return self.state()

    def state(self) -> tuple[bool, ProviderOutageError | None]:
        return self.breaker.is_open, self.breaker.gave_up

    def outages(self) -> list[Outage]:
        return list(self.breaker.outages)


_BreakerActor: Any = ray.remote(num_cpus=0)(_BreakerState)


class ClusterBreaker:
    """A handle on the cluster's breaker actor; picklable, so it travels to workers."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    @classmethod
    def create(
        cls, max_outage: float = DEFAULT_MAX_OUTAGE, *, probe_timeout: float = PROBE_TIMEOUT
    ) -> ClusterBreaker:
        """`probe_timeout`: seconds after which a probe that has not reported is taken as
        lost (its worker died) and another caller may probe."""
        return cls(_BreakerActor.remote(max_outage, probe_timeout=probe_timeout))

    def local(self, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> SharedBreaker:
        """A worker's admission on the cluster's breaker (`sleep`: injectable)."""
        return SharedBreaker(self.actor, sleep=sleep)

    async def outages(self) -> list[Outage]:
        """The cluster's outages so far (start times on the actor's clock)."""
        return await self.actor.outages.remote()  # type: ignore[no-any-return]


class _SharedPermit(PermitBase):
    __slots__ = ("key", "owner", "probe_sent_at")

    def __init__(self, owner: SharedBreaker, key: int) -> None:
        super().__init__()
        self.owner = owner
        self.key = key
        self.probe_sent_at: float | None = None

    def _admit_now(self) -> bool:
        owner = self.owner
        return not owner.is_open and owner.gave_up is None

    async def _acquire(self) -> None:
        await self.owner._acquire(self)

    def _release(self, response: CompletionResponse | None, error: BaseException | None) -> None:
        self.owner._finish(self, response, error)


class SharedBreaker:
    """A worker's view of the cluster's breaker: admits at once while the cluster's breaker
    is closed (as this worker last heard), asks the actor while it is open.

    `outages` stays empty: the cluster's outages are the driver's to report, once each.
    """

    def __init__(
        self, actor: Any, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        self.actor = actor
        self._sleep = sleep
        self._worker = uuid.uuid4().int & 0xFFFF_FFFF  # request keys unique across workers
        self.is_open = False
        self.gave_up: ProviderOutageError | None = None
        self.outages: list[Outage] = []
        self._failing = False  # reported a failure since the last success reported
        self._asking: asyncio.Lock | None = None
        self._learning: set[asyncio.Task[None]] = set()

    def admit(self, request: CompletionRequest) -> _SharedPermit:
        return _SharedPermit(self, (self._worker << 32) ^ id(request))

    def excuses(self, error: BaseException) -> bool:
        """As `OutageBreaker.excuses`: the attempt failed in an outage being waited out."""
        return self.is_open and self.gave_up is None and feedback(None, error).down

    async def _acquire(self, permit: _SharedPermit) -> None:
        if self._asking is None:
            self._asking = asyncio.Lock()
        async with self._asking:  # one waiter asks for the worker; the others wait behind it
            while True:
                if self.gave_up is not None:
                    # Fresh: one traceback each.
                    gave_up = self.gave_up
                    raise ProviderOutageError(str(gave_up), last_answer=gave_up.last_answer)
                if not self.is_open:
                    return
                wait, probe_sent_at, gave_up = await self.actor.admit.remote(permit.key)
                if gave_up is not None:
                    self._give_up(gave_up)
                    continue
                if wait is None:
                    if probe_sent_at is None:
                        self.is_open = False  # the cluster's breaker closed
                    permit.probe_sent_at = probe_sent_at
                    return
                await self._sleep(min(wait, POLL_SECONDS))

    def _finish(
        self,
        permit: _SharedPermit,
        response: CompletionResponse | None,
        error: BaseException | None,
    ) -> None:
        probe = permit.probe_sent_at is not None
        fb = feedback(response, error)
        if fb.down:
            self._failing = True
        elif isinstance(error, asyncio.CancelledError | BatchCancelledError | TokenLimitError):
            if not probe:
                return  # never reached the server (a probe still frees the cluster's turn)
        elif not (probe or self._failing or self.is_open):
            return  # the hot path: all is well, nothing to tell
        elif not fb.timed_out:
            self._failing = False  # an answer: the server is up
        task = asyncio.ensure_future(self._report(permit, _portable(error)))
        self._learning.add(task)
        task.add_done_callback(self._learning.discard)

    async def _report(self, permit: _SharedPermit, error: BaseException | None) -> None:
        try:
            is_open, gave_up = await self.actor.report.remote(
                permit.key, permit.probe_sent_at, error
            )
        except Exception:  # the actor is gone (the run is ending): nothing left to follow
            return
        if gave_up is not None:
            self._give_up(gave_up)
        self.is_open = is_open

    def _give_up(self, error: ProviderOutageError) -> None:
        if self.gave_up is None:
            self.gave_up = error


def _portable(error: BaseException | None) -> BaseException | None:
    """`error`, or a plain error of the same kind for the breaker when pickle cannot carry it
    (a hand-written client's exotic exception)."""
    if error is None:
        return None
    try:
        pickle.dumps(error)
    except Exception:
        down = feedback(None, error).down
        return ConnectionError(str(error)) if down else RuntimeError(str(error))
    return error
